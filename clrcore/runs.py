"""A job spec in, a run folder of artifacts and a JSON summary out.

The `clr` command and the Celery worker both call `run_job`, so a job behaves the same locally and
through the service. Everything user-visible (plots, reports, logs) is written here, at the edge;
the modules below return data. A run folder that already holds a checkpoint or a range-test result
is resumed, not redone: that is what makes a redelivered job cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clrcore import finetune, lr_backoff, plots, reports
from clrcore.checkpoint import capture_rng_state, load_checkpoint, plain, restore_rng_state
from clrcore.cycle_fit import fit_cycles
from clrcore.datasets import Dataset, load_dataset, sample, with_train_subset
from clrcore.files import atomic_write, write_text
from clrcore.hooks import Hooks, Progress, StopRequested, TrainingDiverged, check_may_write
from clrcore.json_safe import json_safe
from clrcore.loaders import make_loader, normalised_images, normalization
from clrcore.lr_choice import RangeTestChoice, read_range_test, write_range_test
from clrcore.lr_range import RangeTestResult, combine_seeds, range_test
from clrcore.models import build_model, fit_image_count, fit_to_data, has_data_init
from clrcore.optim import build_optimizer
from clrcore.schedules import Schedule, build_schedule, preview, schedule_from_spec
from clrcore.specs import (
    SHARED_FALL_MAX,
    UPLOADED_WEIGHTS,
    JobSpecBase,
    RangeTestOptions,
    RangeTestSpec,
    TrainSpec,
)
from clrcore.suggest import (
    TRIANGULAR_BASE_DIVISOR,
    TRIANGULAR_FAMILY,
    Recommendation,
    cliff_margin_for,
    safe_recommendation,
)
from clrcore.train_setup import TrainConfig, config_from_spec, resolve_device, seed_everything, steps_per_epoch
from clrcore.trainer import train
from clrcore.weights import LoadedWeights, WeightsError, load_weights

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.pt"
RANGE_TEST = "range_test.json"  # the sweep's log and its choice (`lr_choice.RangeTestChoice`)


# ---------------------------------------------------------------- shared setup


def _write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=1, default=str))


def _load_data(spec: JobSpecBase, data_dir: Path, download: bool, max_decoded_bytes: int | None,
               memmap_min_bytes: int | None = None) -> Dataset:
    ds = load_dataset(spec.dataset, Path(data_dir), path=spec.dataset_path, download=download,
                      max_decoded_bytes=max_decoded_bytes, image_size=spec.image_size,
                      memmap_min_bytes=memmap_min_bytes)
    return with_train_subset(ds, spec.train_subset)


def fresh_model(spec: JobSpecBase, ds: Dataset, device: torch.device, weights_file: Path | None = None,
                notes: list[str] | None = None) -> nn.Module:
    """A freshly seeded model, with its data-dependent initialisation done on training images drawn at
    random (image folders load class by class: the first few thousand would show one class).

    `weights_file`, a safetensors file, is loaded (safetensors, never pickle) before the head is
    replaced, and the data-dependent initialisation is then skipped unless the file's stem did not fit
    (resnet_fast's whitening from other channels): the worker passes the file of the uploaded weights
    `finetune.weights: wt_...` names, the `clr` command a local `--weights-file`.

    Pretrained RGB stem filters meeting grey data are summed into one channel (grey filters on RGB data
    tiled), for torchvision's weights and uploaded ones alike; `notes`, when given, gets one line per
    such conversion, for the job's summary.
    """
    seed_everything(spec.seed)
    _, channels, _, _ = ds.train.images.shape
    size = ds.train.input_size
    tune = spec.finetune
    named = tune.weights if tune is not None else None
    uploaded = named is not None and UPLOADED_WEIGHTS.match(named) is not None
    if named is not None and not uploaded and weights_file is not None:
        raise WeightsError(f"finetune.weights {named} and a weights file: name one starting point")
    if uploaded and weights_file is None:
        raise WeightsError(f"finetune.weights {named}: uploaded weights are fetched by the service's worker; "
                           "none was given to this run (locally, pass the file: clr train --weights-file)")
    model = build_model(spec.model, channels, len(ds.classes), size,
                        weights=None if uploaded else named).to(device)
    refit = has_data_init(model)
    said = notes if notes is not None else []
    if named is not None and not uploaded and channels != 3:  # torchvision's weights are RGB
        from clrcore.zoo import stem_conversion

        said.append(f"weights {named}: the stem's pretrained filters converted, {stem_conversion(3, channels)}")
    if weights_file is not None:
        loaded = _load_file(model, spec, weights_file)
        source = named if uploaded else Path(weights_file).name
        said += [f"weights {source}: stem {name} converted, {how}" for name, how in loaded.adapted.items()]
        refit = refit and bool(set(loaded.kept) - _head_names(model))  # a tensor besides the head kept: the stem
    if tune is not None:
        finetune.prepare(model, len(ds.classes), groups=tune.groups, body_lr_divisor=tune.body_lr_divisor,
                         freeze_epochs=tune.freeze_epochs).to(device)  # the fresh head is built on the CPU
    if refit:  # only then: 5,000 float images of a large-image dataset are not small
        images = sample(ds.train, fit_image_count(*ds.train.images.shape[2:]), seed=spec.seed)
        fit_to_data(model, normalised_images(images, device=device, **normalization(ds, spec.normalize)))
    return model


def _head_names(model: nn.Module) -> set[str]:
    from clrcore.zoo import classifier_head

    try:
        head = classifier_head(model)[2]
    except ValueError:
        return set()
    return {f"{name}.{p}" for name, module in model.named_modules() if module is head
            for p, _ in module.named_parameters()}


def _load_file(model: nn.Module, spec: JobSpecBase, weights_file: Path) -> LoadedWeights:
    """Load the file into `model`: the names the model kept its own of (shapes that differ), and the
    stem converted to the data's channels, if it was."""
    from clrcore.state_shapes import layout

    try:
        size_dependent = layout(spec.model)[1]  # e.g. a ViT's position embedding at another image size
    except KeyError:
        size_dependent = set()
    loaded = load_weights(model, weights_file, free=size_dependent)
    log.info("weights %s loaded into %s; kept the model's own %s%s", Path(weights_file).name, spec.model,
             ", ".join(loaded.kept) or "nothing",
             "".join(f"; {name}: {how}" for name, how in loaded.adapted.items()))
    return loaded


def _sweep_config(spec: JobSpecBase, options: RangeTestOptions, device: torch.device) -> TrainConfig:
    """Optimizer settings of the job, at the sweep's first LR (the sweep sets the LR each step)."""
    start = options.first_lr(spec.optimizer.name)
    flat = build_schedule("constant", base_lr=start, max_lr=start, step_size=1,
                          total_steps=1)
    return TrainConfig(epochs=1, batch_size=spec.batch_size, schedule=flat, optimizer=spec.optimizer.name,
                       momentum=spec.optimizer.momentum, nesterov=spec.optimizer.nesterov,
                       weight_decay=spec.optimizer.weight_decay, beta2=spec.optimizer.beta2,
                       bn_bias_lr_scale=spec.optimizer.bn_bias_lr_scale,
                       norm_shift_decay=spec.optimizer.norm_shift_decay,
                       seed=spec.seed, device=device)


# On CUDA the sweep reads its losses this many steps at a time (a 200-step sweep syncs 10 times, and
# a divergence is still caught within 20 steps); on a CPU every step, where a read costs nothing.
SWEEP_SYNC_EVERY_CUDA = 20


def sweep_speed(device: torch.device, model: nn.Module) -> dict[str, Any]:
    """The sweep's speed settings, as training's on CUDA: cuDNN autotuning, channels_last, no per-step
    host read. Converts `model` in place; returns the loader's and range_test's keyword arguments."""
    if device.type != "cuda":
        return {"channels_last": False, "sync_every": 1}
    torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest kernels once
    model.to(memory_format=torch.channels_last)
    return {"channels_last": True, "sync_every": SWEEP_SYNC_EVERY_CUDA}


def _sweep(spec: JobSpecBase, options: RangeTestOptions, policy: str, ds: Dataset, model: nn.Module,
           device: torch.device, hooks: Hooks, label_smoothing: float = 0.0,
           train_epochs: int | None = None, weights_file: Path | None = None) -> RangeTestResult:
    """Run the LR range test on `model` (restored afterwards) with the job's optimizer and data.

    With k seeds (`options.sweep_seeds`: as given, or by default 3 where 3 sweeps are cheap beside the
    `train_epochs` of the training job that asked, else 1), the first sweep runs on `model` with batch
    order spec.seed; the others branch from it `options.shared_steps` up the ladder with batch orders
    seeded spec.seed + 1 .. + k-1 (the same initial weights). With no shared steps (shared_decades 0, a
    linear ladder), or where the first sweep stopped before the branch point or its loss fell
    SHARED_FALL_MAX there (its first steps are not flat), they sweep the whole ladder
    on fresh models (from `weights_file` too, as the job's model) seeded as their batch orders. The
    result's picks are the seeds' aggregate (`lr_range.combine_seeds`). A sweep stopped by request stops
    the whole job's sweeps.
    """
    iters = steps_per_epoch(len(ds.train), spec.batch_size)
    num_iter = options.steps(iters, spec.optimizer.name)
    shared = options.shared_steps(num_iter, spec.optimizer.name)
    train_steps = None if train_epochs is None else train_epochs * iters
    count = options.sweep_seeds(num_iter, train_steps, shared)
    seeds = [spec.seed + i for i in range(count)]
    rule = options.pick_rule(spec.sweeps_head_only)
    # the count if the seeds sweep whole: the default is weighed again at the whole cost
    whole_count = min(count, options.sweep_seeds(num_iter, train_steps))
    first = _sweep_one(spec, options, policy, ds, model, device, hooks, label_smoothing, rule,
                       branch_seeds=seeds[1:] if shared else [], shared=shared, whole_plan=whole_count * num_iter)
    results = [first, *first.branches]
    if shared and len(results) == 1:  # it did not branch: the others sweep whole, as many as that affords
        seeds = seeds[:whole_count]
    rng = capture_rng_state()  # the other seeds' models reseed the global RNG: put it back after them
    try:
        for seed in seeds[len(results):]:
            if results[-1].stop_reason == "stopped":
                break
            seeded = spec.model_copy(update={"seed": seed})
            again = fresh_model(seeded, ds, device, weights_file)
            results.append(_sweep_one(seeded, options, policy, ds, again, device, hooks, label_smoothing, rule,
                                      whole=(seed - spec.seed, len(seeds))))
    finally:
        restore_rng_state(rng)
    return combine_seeds(results, seeds[: len(results)], policy, rule)


def _sweep_one(spec: JobSpecBase, options: RangeTestOptions, policy: str, ds: Dataset, model: nn.Module,
               device: torch.device, hooks: Hooks, label_smoothing: float = 0.0, rule: str = "ours",
               branch_seeds: list[int] | None = None, shared: int = 0,
               whole: tuple[int, int] | None = None, whole_plan: int | None = None) -> RangeTestResult:
    """One sweep with the spec's seed, `rule` picking max_lr from it, and its branches: one per seed of
    `branch_seeds`, each going on from its step `shared` with batches in that seed's order.

    The progress counts every step of the job's sweeps: the first's, then each branch's own; `whole`
    (i, k) marks the i-th of k seeds swept whole after a first sweep that did not branch, `whole_plan` the
    steps of the job's sweeps if they all sweep whole (default: this one). Until the first sweep passes its
    branch point the total is the longer plan, so the fraction shown never goes back.

    A fine-tuned model is swept as its first epoch trains (body frozen if it starts frozen); the ladder
    is the head's LR, the other layer groups keep their ratios to it.
    """
    speed = sweep_speed(device, model)
    optimizer = build_optimizer(model, _sweep_config(spec, options, device))
    finetune.set_frozen(model, 0)
    inputs = normalization(ds, spec.normalize)  # the sweep must see the inputs training will see

    def batches(seed: int) -> Any:
        return make_loader(ds.train, spec.batch_size, device=device, **inputs, train=True,
                           translate=spec.augment.translate, flip=spec.augment.flip,
                           drop_last=len(ds.train) > spec.batch_size, channels_last=speed["channels_last"],
                           generator=torch.Generator(device=device).manual_seed(seed))

    val = None
    if options.validation:
        test = make_loader(ds.test, spec.batch_size, device=device, **inputs, train=False,
                           channels_last=speed["channels_last"])
        val = [b for _, b in zip(range(options.val_batches), test, strict=False)]
    bf16 = device.type == "cuda" and spec.precision != "fp32"
    num_iter = options.steps(steps_per_epoch(len(ds.train), spec.batch_size), spec.optimizer.name)
    branch_seeds = branch_seeds or []
    offset = whole[0] * num_iter if whole else 0
    emitted: dict[str, Any] = {"at": -math.inf, "pending": None}  # the first step always shows

    def on_step(record: dict[str, Any]) -> None:
        # "iteration" is already 1-based: the ladder position of this optimizer step; a branch's own steps
        # follow the first sweep's
        own = num_iter - record.get("branch_at", shared)  # the steps each branch runs itself
        branched, whole_steps = num_iter + len(branch_seeds) * own, whole_plan or num_iter
        if whole:
            total = whole[1] * num_iter
        elif "branch" in record or record.get("branched"):
            total = branched
        elif record.get("branched") is False or not branch_seeds:
            total = whole_steps
        else:  # before the branch point: whichever plan is longer
            total = max(branched, whole_steps)
        done = offset + record["iteration"] + record.get("branch", 0) * own
        progress = Progress("range_test", 0, 0, done, total,
                            {"lr": record["lr"], "loss": record["loss"],
                             "smoothed_loss": record["smoothed"] or float("nan")})
        now = time.monotonic()
        last_rung = done == total and not record["skipped"]
        if hooks.on_progress and (last_rung or now - emitted["at"] >= hooks.progress_interval):
            emitted["at"], emitted["pending"] = now, None
            hooks.on_progress(progress)
        else:
            emitted["pending"] = progress

    result = range_test(
        model, optimizer, nn.CrossEntropyLoss(label_smoothing=label_smoothing), batches(spec.seed),
        start_lr=options.first_lr(spec.optimizer.name), end_lr=options.end_lr, num_iter=num_iter, mode=options.mode,
        smooth=options.smooth, diverge_factor=options.diverge_factor, val_batches=val,
        val_every=options.val_every, accumulation_steps=options.accumulation_steps,
        autocast_dtype=torch.bfloat16 if bf16 else None, device=device,
        on_step=on_step, should_stop=hooks.should_stop, policy=policy, read=options.read,
        sync_every=speed["sync_every"], rule=rule, branch_at=shared, branch_fall=SHARED_FALL_MAX,
        cliff_margin=cliff_margin_for(spec.model, spec.optimizer.name),
        branches=[functools.partial(batches, seed) for seed in branch_seeds],
    )
    if hooks.on_progress and emitted["pending"] is not None:  # a sweep that stopped early: its last step
        hooks.on_progress(emitted["pending"])
    return result


def _save_sweep(result: RangeTestResult, out_dir: Path, iters_per_epoch: int, epochs_hint: int | None,
                model: nn.Module | None = None,
                fallback: Callable[[str], Recommendation] | None = None) -> RangeTestChoice:
    """Write range_test.json, the per-batch CSV log and the plot; return the sweep's choice.

    For a fine-tuned `model` the choice adds each layer group's bounds (the head's times its scale).
    """
    choice = RangeTestChoice.from_result(result, iters_per_epoch=iters_per_epoch, epochs_hint=epochs_hint,
                                         fallback=fallback)
    rec = choice.recommendation
    if rec is not None and model is not None and finetune.layer_groups(model):
        choice = dataclasses.replace(choice, group_bounds=finetune.group_bounds(model, rec.base_lr, rec.max_lr))
    write_range_test(out_dir / RANGE_TEST, result, choice)
    result.save_log(out_dir / "range_test_log.csv")
    lrs, smoothed = result.curve()
    taken = [r for r in result.log if not r["skipped"]]
    val = None
    if result.val_log:
        val = {k: [v.get(k) for v in result.val_log] for k in ("lr", "val_loss", "val_acc")}
    rec = result.recommendation  # the band a rule picked; a safe fallback is no reading of this curve
    plots.plot_range_test(
        out_dir / "range_test.png", lrs, smoothed, raw=[r["loss"] for r in taken],
        suggestions=result.suggestions, band=None if rec is None else (rec.base_lr, rec.max_lr),
        diverged_at=None if result.stopped_at is None else result.stopped_at[1], val=val,
    )
    return choice


def _stopped(hooks: Hooks) -> bool:
    return bool(hooks.should_stop and hooks.should_stop())


# ---------------------------------------------------------------- the two jobs


def _prepare(spec: JobSpecBase, out_dir: Path, data_dir: Path, download: bool,
             max_decoded_bytes: int | None = None, weights_file: Path | None = None,
             memmap_min_bytes: int | None = None) -> tuple[Path, torch.device, Dataset, nn.Module, list[str]]:
    """The run folder (with spec.json), the device, the data, a freshly seeded model and the notes of
    its making (a pretrained stem converted to the data's channels) for the summary's warnings."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "spec.json", spec.model_dump(mode="json"))
    device = resolve_device(spec.device)
    ds = _load_data(spec, data_dir, download, max_decoded_bytes, memmap_min_bytes)
    notes: list[str] = []
    model = fresh_model(spec, ds, device, weights_file, notes)
    for note in notes:
        log.info("%s", note)
    return out_dir, device, ds, model, notes


def _sweep_and_save(spec: JobSpecBase, options: RangeTestOptions, policy: str, ds: Dataset, model: nn.Module,
                    device: torch.device, hooks: Hooks, out_dir: Path, *, epochs_hint: int | None = None,
                    label_smoothing: float = 0.0, weights_file: Path | None = None,
                    fallback: Callable[[str], Recommendation] | None = None) -> RangeTestChoice:
    """Run the sweep and write its artifacts; a sweep cut short by a stop request raises StopRequested."""
    result = _sweep(spec, options, policy, ds, model, device, hooks, label_smoothing, train_epochs=epochs_hint,
                    weights_file=weights_file)
    check_may_write(hooks.may_write, "range test result")
    choice = _save_sweep(result, out_dir, steps_per_epoch(len(ds.train), spec.batch_size), epochs_hint, model,
                         fallback)
    if result.stop_reason == "stopped" and _stopped(hooks):  # the partial curve stays in the run folder
        raise StopRequested("stopped during the range test")
    return choice


def run_range_test(spec: RangeTestSpec, out_dir: Path, *, data_dir: Path, download: bool = False,
                   hooks: Hooks | None = None, max_decoded_bytes: int | None = None,
                   weights_file: Path | None = None, memmap_min_bytes: int | None = None) -> dict[str, Any]:
    """Sweep the LR for the spec's model and data; write the result, log and plot; return the summary."""
    started = time.perf_counter()
    out_dir, device, ds, model, notes = _prepare(spec, out_dir, data_dir, download, max_decoded_bytes,
                                                weights_file, memmap_min_bytes)
    choice = _sweep_and_save(spec, spec, spec.policy, ds, model, device, hooks or Hooks(), out_dir,
                             weights_file=weights_file)
    summary = choice.summary()
    return {"kind": "range_test", **summary, "warnings": [*notes, *summary["warnings"]],
            "seconds": round(time.perf_counter() - started, 3)}


def _range_test_choice(spec: TrainSpec, ds: Dataset, model: nn.Module, device: torch.device, out_dir: Path,
                       hooks: Hooks, weights_file: Path | None = None) -> RangeTestChoice | None:
    """The range test's choice when the spec leaves an LR bound to it ('auto'), else None.

    A range test already saved in the run folder is reused, so a resumed job trains with the bounds
    and recipe its first delivery chose; a sweep cut short by a stop request is run again.
    """
    if spec.max_lr != "auto" and spec.base_lr != "auto":
        return None
    choice = read_range_test(out_dir / RANGE_TEST)
    if choice is None or choice.stop_reason == "stopped":
        choice = _sweep_and_save(spec, spec.range_test, spec.policy, ds, model, device, hooks, out_dir,
                                 epochs_hint=spec.epochs, label_smoothing=spec.label_smoothing,
                                 weights_file=weights_file,
                                 fallback=lambda reason: _safe_fallback(spec, reason))
    if choice.recommendation is None:  # a range_test.json from before the fallback: no pick saved
        raise ValueError("range test found no usable LR (the loss never fell): " + "; ".join(choice.warnings))
    if choice.source == "safe_fallback":
        log.warning("range test gave no pick; training with the safe fallback: %s", choice.recommendation.rule)
    return choice


def _safe_fallback(spec: TrainSpec, reason: str) -> Recommendation:
    """No rule could pick: the documented safe recipe for the optimizer, not a failure or a bad LR."""
    return safe_recommendation(spec.optimizer.name, spec.policy, reason=reason, div_factor=spec.div_factor)


def _resolve_bounds(spec: TrainSpec, choice: RangeTestChoice | None) -> tuple[float, float]:
    """(base_lr, max_lr): the spec's, with the range test's where the spec says 'auto'."""
    rec = None if choice is None else choice.recommendation
    if rec is None and (spec.max_lr == "auto" or spec.base_lr == "auto"):
        raise ValueError("an 'auto' LR bound needs the range test's choice")
    max_lr = rec.max_lr if rec is not None and spec.max_lr == "auto" else float(spec.max_lr)
    base_lr = rec.base_lr if rec is not None and spec.base_lr in ("auto", None) else spec.base_lr
    if base_lr is None:
        base_lr = max_lr / (spec.div_factor if spec.policy == "one_cycle" else TRIANGULAR_BASE_DIVISOR)
    base_lr = float(base_lr)
    if spec.policy not in ("one_cycle", "constant") and base_lr >= max_lr:
        raise ValueError(f"base_lr {base_lr:.3g} is not below max_lr {max_lr:.3g}")
    return base_lr, max_lr


def _backed_off(spec: TrainSpec, base_lr: float, max_lr: float,
                backoffs: list[lr_backoff.Backoff]) -> tuple[float, float]:
    """The bounds after `backoffs` restarts: max_lr scaled, and base_lr with it unless the user set it."""
    factor = lr_backoff.scale(backoffs)
    return (base_lr * factor if spec.base_lr in ("auto", None) else base_lr), max_lr * factor


def _back_off(spec: TrainSpec, picked: tuple[float, float], backoffs: list[lr_backoff.Backoff], max_lr: float,
              exc: TrainingDiverged, out_dir: Path, hooks: Hooks) -> list[lr_backoff.Backoff]:
    """The restarts after this divergence, written to the run folder with the diverged attempt's checkpoint
    removed; re-raises `exc` where the run may not restart (a max LR the user set, the restarts spent, or
    a fixed base_lr the lowered max LR would reach)."""
    done = [*backoffs, lr_backoff.Backoff(max_lr=max_lr, step=exc.step, lr=exc.lr)]
    low, high = _backed_off(spec, *picked, done)
    if spec.max_lr != "auto" or not lr_backoff.may_back_off(backoffs) \
            or (spec.policy not in ("one_cycle", "constant") and low >= high):
        raise exc
    check_may_write(hooks.may_write, "the LR back-off")
    lr_backoff.write_backoffs(out_dir, done)  # before the restart: a redelivery resumes the lowered run
    log.warning("%s", done[-1].note())
    (out_dir / CHECKPOINT).unlink(missing_ok=True)  # the diverged attempt's epochs
    return done


def _drop_other_attempt(path: Path, config: TrainConfig) -> None:
    """Remove a checkpoint written at another attempt's bounds: after a restart, an object store may still
    hold the diverged attempt's (deletions are not synced), and resuming it would mix the two runs."""
    if path.exists() and load_checkpoint(path, map_location="cpu").get("schedule") != plain(config.schedule):
        log.warning("%s was written at another attempt's LR bounds; training this attempt from the start", path)
        path.unlink()


def _planned_config(spec: TrainSpec, base_lr: float, max_lr: float, iters: int, device: torch.device,
                    out_dir: Path) -> TrainConfig:
    """The run's config at these bounds, its schedule's preview plotted."""
    schedule = schedule_from_spec(spec, base_lr=base_lr, max_lr=max_lr, iters_per_epoch=iters)
    planned = preview(schedule, spec.epochs * iters)
    plots.plot_lr_schedule(out_dir / "lr_schedule_preview.png", planned["step"], planned["lr"],
                           planned["momentum"] or None)
    return config_from_spec(spec, schedule, device, checkpoint_path=out_dir / CHECKPOINT)


def _apply_recipe(spec: TrainSpec, choice: RangeTestChoice | None,
                  iters: int) -> tuple[TrainSpec, dict[str, Any]]:
    """The spec with the range test's LR bounds and its step fitted to the epochs where left to us.

    The bounds come from `choice` ('auto'). For the triangular family, whenever `spec.recipe_fields`
    (see `specs.TrainSpec`) holds 'step_size', with max_lr 'auto' or fixed alike: the epochs (given or
    default) stay, and the step is chosen so they hold a whole number of cycles (cycle_fit.py, as the
    saved recipe did); when not one cycle with a step of at least an epoch fits, the run becomes
    one_cycle. `fit` in the returned values says which. Returns the spec to train and every value the
    range test or the fit supplied (the LR bounds included), for the summary.
    """
    rec = None if choice is None else choice.recommendation
    taken: dict[str, Any] = {}
    if rec is not None:
        taken = {"max_lr": rec.max_lr} if spec.max_lr == "auto" else {}
        if spec.base_lr in ("auto", None):
            taken["base_lr"] = rec.base_lr
    if spec.policy not in TRIANGULAR_FAMILY or "step_size" not in (spec.recipe_fields or []):
        return spec, taken
    # the step was left to us: fit it so the epochs (given or default) hold whole cycles
    fit = fit_cycles(spec.epochs, iters, spec.policy)
    if fit.step_iterations is None:
        taken |= {"policy": "one_cycle", "fit": fit.note}  # one_cycle starts at max_lr/div_factor
    else:
        taken |= {"step_size": fit.step_iterations, "step_unit": "iterations", "fit": fit.note}
    schedule_fields = {k: v for k, v in taken.items() if k in ("step_size", "step_unit", "policy")}
    return spec.model_copy(update=schedule_fields), taken


def _cycle_warnings(spec: TrainSpec, schedule: Schedule, iters: int) -> list[str]:
    """A triangular-family run that stops mid-cycle ends above base_lr, off the accuracy peak: say so."""
    period = schedule.cycle_length()
    total = spec.epochs * iters
    if spec.policy not in TRIANGULAR_FAMILY or not period or total % period == 0:
        return []
    fix = (f"use a multiple of {period // iters} epochs" if period % iters == 0
           else "choose epochs and step_size so that the run is a whole number of cycles")
    return [f"epochs={spec.epochs} ends mid-cycle ({total / period:.2f} cycles of {period} iterations, "
            f"last LR {schedule.lr(total - 1):.3g}); {fix} to end on a cycle minimum"]


def run_training(spec: TrainSpec, out_dir: Path, *, data_dir: Path, download: bool = False,
                 hooks: Hooks | None = None, max_decoded_bytes: int | None = None,
                 weights_file: Path | None = None, memmap_min_bytes: int | None = None) -> dict[str, Any]:
    """Train with a cyclical schedule; write history, report, plots, checkpoint; return the summary.

    Resumes from out_dir/checkpoints/last.pt when it exists. `weights_file`: the safetensors file of
    uploaded weights the spec's `finetune.weights` names (the worker fetches it).
    """
    hooks = hooks or Hooks()
    started = time.perf_counter()
    out_dir, device, ds, model, notes = _prepare(spec, out_dir, data_dir, download, max_decoded_bytes,
                                                weights_file, memmap_min_bytes)
    choice = _range_test_choice(spec, ds, model, device, out_dir, hooks, weights_file)
    picked_base, picked_max = _resolve_bounds(spec, choice)
    lr_info: dict[str, Any] = {"source": "spec"} if choice is None else choice.lr_info()
    iters = steps_per_epoch(len(ds.train), spec.batch_size)
    spec, from_recipe = _apply_recipe(spec, choice, iters)
    cycle_warnings = _cycle_warnings(spec, schedule_from_spec(spec, base_lr=picked_base, max_lr=picked_max,
                                                              iters_per_epoch=iters), iters)
    for warning in cycle_warnings:
        log.warning("%s", warning)
    # a range test's max LR that diverges is tried again lower (lr_backoff.py); the user's own fails
    backoffs = lr_backoff.read_backoffs(out_dir) if spec.max_lr == "auto" else []
    while True:
        base_lr, max_lr = _backed_off(spec, picked_base, picked_max, backoffs)
        config = _planned_config(spec, base_lr, max_lr, iters, device, out_dir)
        if backoffs:
            _drop_other_attempt(out_dir / CHECKPOINT, config)
        try:
            result = train(model, ds, config, hooks=hooks)
            break
        except StopRequested:
            if hooks.may_write is None or hooks.may_write():  # fenced off: the folder is not ours to touch
                _save_partial_history(out_dir)
            raise
        except TrainingDiverged as exc:
            backoffs = _back_off(spec, (picked_base, picked_max), backoffs, max_lr, exc, out_dir, hooks)
            model = fresh_model(spec, ds, device, weights_file)
    run_warnings = [*notes, *(b.note() for b in backoffs), *cycle_warnings]
    if backoffs:
        lr_info["backoffs"] = [dataclasses.asdict(b) for b in backoffs]

    check_may_write(hooks.may_write, "final artifacts")
    bn_check = result.batchnorm_check

    report = reports.classification_report(result.y_true, result.y_pred, ds.classes)
    reports.write_report(report, out_dir)
    history = result.history
    _write_json(out_dir / "history.json", history)
    plots.plot_history(out_dir / "history.png", history)
    plots.plot_lr_schedule(out_dir / "lr_schedule.png", list(range(len(history["lr"]))), history["lr"],
                           history.get("momentum") or None)
    plots.plot_confusion_matrix(out_dir / "confusion_matrix.png", report.matrix, ds.classes)
    check_may_write(hooks.may_write, "final weights")
    with atomic_write(out_dir / "model.pt") as handle:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, handle)
    return {
        "kind": "train",
        "accuracy": report.accuracy,
        "metrics": result.metrics,
        "base_lr": base_lr,
        "max_lr": max_lr,
        "lr_choice": lr_info,
        "policy": spec.policy,
        "epochs": spec.epochs,
        "step_size": spec.step_size,
        "step_unit": spec.step_unit,
        "from_recipe": from_recipe,
        "warnings": run_warnings,
        "epochs_run": result.epochs_run,
        "resumed_from": result.resumed_from,
        "iters_per_epoch": iters,
        "timings": result.timings,
        **({} if bn_check is None else {"batchnorm_check": json_safe(dataclasses.asdict(bn_check))}),
        "seconds": round(time.perf_counter() - started, 3),
        "device": str(device),
        "classes": ds.classes,
        **({"group_bounds": finetune.group_bounds(model, base_lr, max_lr)} if finetune.layer_groups(model) else {}),
    }


def _save_partial_history(out_dir: Path) -> None:
    """A stopped run keeps the history of its complete epochs (from the checkpoint) beside the checkpoint."""
    if not (out_dir / CHECKPOINT).exists():
        return
    history = load_checkpoint(out_dir / CHECKPOINT)["history"]
    _write_json(out_dir / "history.json", history)
    if history.get("epoch"):
        plots.plot_history(out_dir / "history.png", history)


def run_job(spec: RangeTestSpec | TrainSpec, out_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """Run either kind of job; keyword arguments as for run_range_test / run_training."""
    if isinstance(spec, RangeTestSpec):
        return run_range_test(spec, out_dir, **kwargs)
    return run_training(spec, out_dir, **kwargs)
