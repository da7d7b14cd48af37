"""Job specs: the one definition of what a range-test or training job may ask for.

The API validates request bodies with these models and the worker and the `clr` command run them,
so a field means the same thing everywhere. Torch-free on purpose: the API imports this module.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from clrcore import catalog
from clrcore.dataset_paths import dataset_path_problem
from clrcore.presets import PRESETS

UPLOADED_DATASET = re.compile(r"^ds_[a-z0-9]{8,32}$")
UPLOADED_WEIGHTS = re.compile(r"^wt_[a-z0-9]{8,32}$")  # POST /v1/weights; the API checks owner and architecture

PositiveLR = Annotated[float, Field(gt=0, le=1e3)]
Policy = Literal["triangular", "triangular2", "exp_range", "one_cycle", "constant"]
RecipeField = Literal["step_size", "epochs"]
WebhookEvent = Literal["queued", "started", "range_test_done", "progress", "succeeded", "failed", "cancelled",
                       "deleted"]
# Opt-in, asked for by name: progress (throttled, CLR_WEBHOOK_PROGRESS_INTERVAL) and deleted (the job's
# record removed, by its owner or by retention: a receiver that mirrors jobs drops it).
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("queued", "started", "range_test_done", "succeeded", "failed",
                                           "cancelled")


class StrictModel(BaseModel):
    """Unknown fields are an error, so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid")


class OptimizerSpec(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum, or Adam's beta1")
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0, le=1)
    beta2: float = Field(0.999, gt=0, lt=1, description="AdamW only")
    bn_bias_lr_scale: float = Field(
        1.0, ge=0.01, le=1000,
        description="LR multiplier for BatchNorm shifts (airbench uses 64: they move faster than weights)",
    )
    lookahead: bool = Field(
        False, description="from 30 % of the run on, pull the weights towards their moving average every "
        "5 steps, harder towards the end (airbench94's lookahead)",
    )
    norm_shift_decay: bool = Field(
        False, description="decay BatchNorm shifts too, by weight_decay / bn_bias_lr_scale, so they are pulled "
        "towards zero as hard per step as the weights (airbench94's decay)",
    )

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        return self


class AugmentSpec(StrictModel):
    translate: int = Field(2, ge=0, le=8, description="random shift in pixels (pad and crop)")
    flip: bool = Field(True, description="random horizontal flip")
    flip_mode: Literal["random", "alternate"] = Field(
        "random", description="random: each image flipped with probability 1/2 in every epoch; alternate: "
        "each image flipped in every other epoch, from a random start (airbench's flip)",
    )


class FinetuneSpec(StrictModel):
    """Fine-tuning (fastai's recipe): a fresh head, the body frozen at first, discriminative LRs."""

    weights: str | None = Field(
        None, description="starting weights: a torchvision enum the worker has cached "
        "(e.g. 'ResNet18_Weights.IMAGENET1K_V1'), or the id of weights uploaded for this model "
        "(wt_..., POST /v1/weights); None starts from scratch",
    )
    freeze_epochs: int = Field(1, ge=0, le=10_000, description="epochs that train the head only")
    groups: int = Field(3, ge=1, le=16, description="layer groups, the head being the last")
    body_lr_divisor: float = Field(
        100.0, ge=1, le=1e6, description="the first body group's LR is the head's divided by this; the "
        "groups between are spread log-linearly (fastai's slice(lr / divisor, lr))",
    )

class NotifySpec(StrictModel):
    """Where the service POSTs signed notices of a job's life (webhooks), and which ones.

    Only the URL's shape is checked here; the address it names is checked by the API (literal IPs)
    and again, after DNS, before each delivery attempt (`jobs.webhook_addresses`).
    """

    url: str = Field(..., max_length=2048, description="http(s) URL, no credentials in it")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS), min_length=1,
        description="default: every event but `progress` (opt-in, throttled) and `deleted` (opt-in)",
    )

    @field_validator("url")
    @classmethod
    def _plain_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if "@" in parts.netloc:
            raise ValueError("must not carry credentials (user:password@); receivers verify the signature")
        try:
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError as exc:
            raise ValueError(f"invalid port: {exc}") from None
        if not parts.hostname:
            raise ValueError("must name a host")
        return value


class JobSpecBase(StrictModel):
    """Fields every job shares: what to train and how to feed it."""

    dataset: str = Field("digits", description="a catalog name, or the id of an uploaded dataset (ds_...)")
    dataset_path: str | None = Field(
        None, description="imagefolder only: directory or archive, relative to the data directory"
    )
    model: str = "tiny_cnn"
    image_size: int | None = Field(
        None, ge=8, le=1024,
        description="train at this square side (e.g. 64, 128, 224): training takes random-resized crops "
        "and flips, evaluation resizes then centre-crops; None keeps a uniform dataset's own size and "
        "fits mixed sizes to the data (median shorter side, 32..224)",
    )
    batch_size: int = Field(128, ge=1, le=8192)
    finetune: FinetuneSpec | None = Field(
        None, description="fine-tune: new head, frozen body for some epochs, per-group LRs; the LR "
        "bounds (and the range test's sweep) are the head's",
    )
    optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec.model_validate({}))
    augment: AugmentSpec = Field(default_factory=lambda: AugmentSpec.model_validate({}))
    train_subset: int | None = Field(
        None, ge=1, description="train on N training images drawn at random (the same N for every job)"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    notify: NotifySpec | None = Field(
        None, description="webhooks for this job; without it, the key's default (CLR_WEBHOOK_DEFAULTS) if any"
    )
    normalize: Literal["channel", "pixel_mean", "unit"] = Field(
        "channel",
        description="input scaling: channel = per-channel mean/std of the train split; pixel_mean = "
        "subtract the train split's mean image, 0..255 scale (the Keras CLR blog's CIFAR-10); "
        "unit = pixels / 255 (the blog's Fashion-MNIST)",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value in catalog.DATASETS or UPLOADED_DATASET.match(value):
            return value
        raise ValueError(f"unknown dataset {value!r}; known: {', '.join(catalog.dataset_names())}")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in catalog.MODELS:
            raise ValueError(f"unknown model {value!r}; known: {', '.join(catalog.model_names())}")
        return value

    @field_validator("image_size")
    @classmethod
    def _fits_the_model(cls, value: int | None, info: ValidationInfo) -> int | None:
        model = catalog.MODELS.get(info.data.get("model") or "")
        if value is not None and model is not None and value < model.min_image_size:
            raise ValueError(f"model {model.name!r} needs images of at least {model.min_image_size}px")
        return value

    @field_validator("finetune")
    @classmethod
    def _weights_fit_the_model(cls, value: FinetuneSpec | None, info: ValidationInfo) -> FinetuneSpec | None:
        model = catalog.MODELS.get(info.data.get("model") or "")
        if value is not None and value.weights is not None and model is not None \
                and value.weights not in model.pretrained and not UPLOADED_WEIGHTS.match(value.weights):
            known = ", ".join(model.pretrained) or "none"
            raise ValueError(f"weights {value.weights!r} are not torchvision weights for {model.name!r} "
                             f"(known: {known}) nor the id of uploaded weights (wt_...)")
        return value

    @field_validator("dataset_path")
    @classmethod
    def _relative_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.replace("\\", "/").split("/")
        if value.startswith(("/", "~")) or ".." in parts or ":" in value:
            raise ValueError("must be a path relative to the data directory, without '..'")
        problem = dataset_path_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @property
    def sweeps_head_only(self) -> bool:
        """The range test sweeps the first epoch's model: a fine-tuned one whose body starts frozen trains
        its head alone there."""
        return self.finetune is not None and self.finetune.freeze_epochs > 0

    @model_validator(mode="after")
    def _imagefolder_needs_path(self) -> JobSpecBase:
        if self.dataset == "imagefolder" and not self.dataset_path:
            raise ValueError("dataset 'imagefolder' needs dataset_path")
        return self


# The default sweep's length: STEPS_PER_DECADE optimizer steps for every decade from its first LR to
# end_lr (300 from 1e-4 to 10). How long the sweep dwells at each LR moves where the loss turns up: on
# bench/lr_regret.py's resnet_fast the cliff sat 7x above the best trained max LR with 20 steps a decade
# and 2x with 60, while tiny_cnn on gray images moved from 0.9x to 0.75x (docs/benchmarks.md). CLIFF_MARGIN
# is learned at this density, so the default holds the density, not a share of an epoch (100-400 steps
# before); `num_iter` or `epochs` still size a sweep by hand.
STEPS_PER_DECADE = 60
MAX_SWEEP_SEEDS = 5
# A training job's sweep seeds when range_test.seeds is left out: DEFAULT_SWEEP_SEEDS when that many
# sweeps take at most SEEDS_SHARE_OF_RUN of the run's training steps, else one. On bench/lr_regret.py's
# tasks three seeds in one job cut ours' mean regret from 0.32-0.39 to 0.21-0.26 points (three sets of
# sweep seeds; held out 1.14 -> 1.01) and bring two jobs' picks to 1.23-1.34x apart at the median where
# single sweeps land 1.36-1.71x apart (docs/benchmarks.md). The issue's own first user (a 4-epoch run of
# 50,000 28-px gray images at batch 128: 1,564 steps) read 1.0 points with one seed and 0.2 with three
# (bench/lr_regret.py's first_user tasks, fourteenth session; 0.61 and 0.35, then 0.73 and 0.65 on fresh
# sweep seeds, on the colour images with AdamW): a quarter (0.25 until then) left that run one
# sweep, 0.6 gives it three, whole (900 steps) or branched (660). With SGD's 300-step sweep that is from
# 1,100 training steps branched and 1,500 whole (3-4 epochs of CIFAR-10 at batch 128); shorter runs keep one.
DEFAULT_SWEEP_SEEDS = 3
SEEDS_SHARE_OF_RUN = 0.6
# How the seeds after the first sweep: from the first one's state SHARED_DECADES up its ladder (at most
# SHARED_SHARE_MAX of the steps), each with its own batch order from there. On bench/lr_regret.py's tasks
# the batch order after the first two decades is what scatters a sweep's pick (the initial weights half as
# much), and 3-seed jobs branched at step 120 of 300 picked as well as whole ones (0.27 and 0.07 points of
# regret against 0.20 and 0.06; docs/benchmarks.md): three seeds cost 660 steps instead of 900.
SHARED_DECADES = 2.0
SHARED_SHARE_MAX = 0.4
# ... but only where the shared steps are flat: where the first sweep's loss falls SHARED_FALL_MAX below its
# start before the branch point (the mean of 10 steps each) the other seeds sweep whole. minigooglenet's
# loss falls from its first decade and turns near 1e-2: seeds that shared two decades shared their turn
# (one job's three picks the same), and seeds branched where its loss had fallen 5 % shared an initial
# state whose fall was too small to read (one job's three seeds refused as noisy, trained at the fallback)
SHARED_FALL_MAX = 0.05
# Where the sweep starts by default: where the loss of the catalog models starts to move (issue 12: from
# 1e-7 seven of nine decades were flat; the bench's sweeps from 1e-4 for SGD and 1e-6 for AdamW fall
# within their first decade), so the points go where the curve has shape: 5-6 decades to end_lr 10.
DEFAULT_START_LR = {"sgd": 1e-4, "adamw": 1e-6}


def default_sweep_steps(first_lr: float, end_lr: float) -> int:
    """The default sweep length from `first_lr` to `end_lr`: STEPS_PER_DECADE steps a decade."""
    return max(5, round(STEPS_PER_DECADE * math.log10(end_lr / first_lr)))


# suggest.PICK_RULES: the rules whose pick can be a run's max_lr (a test keeps the two equal)
PickRule = Literal["ours", "steepest", "valley", "slide", "min_loss", "min_loss_div10", "blog"]
# The default rule where the sweep trains a fine-tuned model's head alone: on the benchmark's six readable
# fine-tuning tasks the lowest loss landed 1.13 points below a grid's best on average (worst 3.1), ours
# 2.0 (worst 6.1); on the two run after this default was set, ours read closer (0.3 and 1.5 against 0.5
# and 2.5), so the choice rests on few tasks (docs/benchmarks.md)
HEAD_ONLY_RULE: PickRule = "min_loss"


class RangeTestOptions(StrictModel):
    """How the LR sweep runs; used alone (range-test job) or inside a training job with max_lr='auto'."""

    start_lr: PositiveLR | None = Field(
        None, description="the sweep's first LR; by default where the loss starts to move for the optimizer "
        f"({', '.join(f'{k} {v:g}' for k, v in DEFAULT_START_LR.items())})",
    )
    end_lr: PositiveLR = 10.0
    num_iter: int | None = Field(
        None, ge=5, le=100_000,
        description="the sweep's length in optimizer steps; by default it is sized in epochs (see `epochs`)",
    )
    epochs: float | None = Field(
        None, gt=0, le=100,
        description="size the sweep in epochs of the training data instead of num_iter steps (at least 5 "
        f"steps); with neither given: {STEPS_PER_DECADE} steps a decade from the first LR to end_lr (300 from "
        "1e-4 to 10), the density the pick's margin was measured at",
    )
    seeds: int | None = Field(
        None, ge=1, le=MAX_SWEEP_SEEDS,
        description="run the sweep this many times (seeds seed, seed+1, ...) in one job and pick from their "
        "aggregate (the geometric mean of the seeds' picks); the result reports each seed's pick and the "
        f"spread. Each seed costs one more sweep. By default 1 in a range-test job, and in a training job "
        f"{DEFAULT_SWEEP_SEEDS} when {DEFAULT_SWEEP_SEEDS} sweeps take at most {SEEDS_SHARE_OF_RUN:.0%} of its "
        "training steps (they pick closer to a grid's best), else 1",
    )
    shared_decades: float = Field(
        SHARED_DECADES, ge=0, le=10,
        description="with several seeds, the seeds after the first go on from the first sweep's state this "
        f"many decades up the ladder (at most {SHARED_SHARE_MAX:.0%} of its steps; only where its loss has not "
        f"fallen {SHARED_FALL_MAX:.0%} below its start by then, else they sweep whole) with their own batch order, "
        "so they cost only the rest of the ladder: where a sweep turns depends on the later batches, not on "
        "the flat first decades. 0: every seed sweeps the whole ladder from its own initial weights. "
        "Exponential ladders only",
    )
    mode: Literal["exp", "linear"] = "exp"
    smooth: float = Field(0.98, ge=0, lt=1, description="EMA beta of the smoothed loss")
    diverge_factor: float = Field(4.0, gt=1)
    validation: bool = Field(False, description="also track loss on a fixed validation subset")
    read: Literal["train", "validation"] = Field(
        "train", description="the curve the rules read: the per-step training loss, or (with validation "
        "on) the validation loss, less noisy where minibatch noise dominates; use val_every 2-5",
    )
    val_every: int = Field(10, ge=1)
    val_batches: int = Field(2, ge=1, le=100)
    accumulation_steps: int = Field(
        1, ge=1, le=64, description="micro-batches per optimizer step; the sweep counts optimizer steps"
    )
    rule: PickRule | None = Field(
        None, description="the rule whose pick becomes max_lr: ours (the zero-lag curve's cliff / margin; the "
        "lowest regret on the benchmark's from-scratch tasks) or a peer's. By default ours, except where the "
        f"sweep trains a fine-tuned model's head alone (finetune.freeze_epochs 1 or more): {HEAD_ONLY_RULE}, the "
        "seed blog's lowest loss, which came closer to a grid's best on the benchmark's fine-tuning tasks",
    )

    def first_lr(self, optimizer: str) -> float:
        """start_lr, or the default start for `optimizer` when none was given."""
        return self.start_lr if self.start_lr is not None else DEFAULT_START_LR[optimizer]

    def steps(self, iters_per_epoch: int, optimizer: str) -> int:
        """The sweep's length in optimizer steps: num_iter when given, else `epochs` of the data, else
        STEPS_PER_DECADE a decade from the first LR for `optimizer` to end_lr."""
        if self.num_iter is not None:
            return self.num_iter
        if self.epochs is not None:
            return max(5, round(self.epochs * iters_per_epoch))
        return default_sweep_steps(self.first_lr(optimizer), self.end_lr)

    def pick_rule(self, head_only: bool) -> PickRule:
        """`rule`, or the default: HEAD_ONLY_RULE where the sweep trains only a fine-tuned model's head
        (a head-only curve turns well below where the whole model trains best), else ours."""
        if self.rule is not None:
            return self.rule
        return HEAD_ONLY_RULE if head_only else "ours"

    def shared_steps(self, sweep_steps: int, optimizer: str) -> int:
        """How many of the first sweep's `sweep_steps` the other seeds share at most: `shared_decades` of the
        ladder from the first LR for `optimizer`, at most SHARED_SHARE_MAX of it; 0 on a linear ladder (and
        none where the first sweep's loss falls SHARED_FALL_MAX before it: those seeds sweep whole)."""
        if self.mode != "exp" or not self.shared_decades:
            return 0
        decades = math.log10(self.end_lr / self.first_lr(optimizer))
        return min(round(sweep_steps * self.shared_decades / decades), int(SHARED_SHARE_MAX * sweep_steps))

    def sweep_seeds(self, sweep_steps: int, train_steps: int | None, shared: int = 0) -> int:
        """`seeds`, or the default: DEFAULT_SWEEP_SEEDS when that many sweeps of `sweep_steps`, the seeds
        after the first sharing its first `shared` steps, take at most SEEDS_SHARE_OF_RUN of a training
        run's `train_steps` (batches; None in a range-test job), else 1."""
        if self.seeds is not None:
            return self.seeds
        steps = shared + DEFAULT_SWEEP_SEEDS * (sweep_steps - shared)
        cost = steps * self.accumulation_steps  # batches, as train_steps counts
        return DEFAULT_SWEEP_SEEDS if train_steps and cost <= SEEDS_SHARE_OF_RUN * train_steps else 1

    @field_validator("end_lr")
    @classmethod
    def _above_start(cls, value: float, info: ValidationInfo) -> float:
        start = info.data.get("start_lr") or max(DEFAULT_START_LR.values())
        if start is not None and start >= value:
            raise ValueError("start_lr must be below end_lr")
        return value


class RangeTestSpec(JobSpecBase, RangeTestOptions):
    kind: Literal["range_test"] = "range_test"
    policy: Policy = Field("triangular", description="the policy the recommended recipe is for")


class ScheduleSpec(StrictModel):
    policy: Policy = "triangular"
    base_lr: PositiveLR | Literal["auto"] | None = Field(
        None,
        description="lower bound; None means max_lr/25 for triangular, triangular2 and exp_range, "
        "max_lr/div_factor for one_cycle, or the range test's pick when max_lr is 'auto'",
    )
    max_lr: PositiveLR | Literal["auto"] = Field(
        "auto", description="upper bound, or 'auto' to run the range test first"
    )
    step_size: float = Field(4.0, gt=0, description="half a cycle, in step_unit")
    step_unit: Literal["epochs", "iterations"] = "epochs"
    gamma: float | None = Field(None, gt=0, le=1, description="exp_range decay per iteration")
    final_amplitude: float | None = Field(
        None, gt=0, le=1, description="exp_range: wanted amplitude fraction at the end; derives gamma"
    )
    pct_start: float = Field(0.25, gt=0, lt=1, description="one_cycle warm-up fraction")
    anneal: Literal["cos", "linear"] = "cos"
    div_factor: float = Field(25.0, gt=1)
    final_div_factor: float = Field(1e4, gt=1)
    one_cycle_preset: Literal["torch", "fastai"] | None = None
    cycle_momentum: bool = False
    base_momentum: float = Field(0.85, ge=0, lt=1)
    max_momentum: float = Field(0.95, ge=0, lt=1)

    # Cross-field rules are field validators on the later field, so a 422 names that field.
    @field_validator("max_lr")
    @classmethod
    def _above_base(cls, value: float | str, info: ValidationInfo) -> float | str:
        base = info.data.get("base_lr")
        cyclic = info.data.get("policy") not in ("one_cycle", "constant")  # they ignore base_lr
        if cyclic and isinstance(base, float) and isinstance(value, float) and base >= value:
            raise ValueError("base_lr must be below max_lr")
        return value

    @field_validator("final_amplitude")
    @classmethod
    def _one_decay_rule(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("gamma") is not None:
            raise ValueError("give gamma or final_amplitude, not both")
        return value

    @field_validator("max_momentum")
    @classmethod
    def _momentum_ordered(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("base_momentum")
        if info.data.get("cycle_momentum") and base is not None and base >= value:
            raise ValueError("base_momentum must be below max_momentum")
        return value


class TrainSpec(JobSpecBase, ScheduleSpec):
    kind: Literal["train"] = "train"
    preset: str | None = Field(None, description="named recipe whose values fill the fields not given")
    epochs: int = Field(10, ge=1, le=10_000)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    tta_flip: bool = Field(
        False, description="final evaluation: average predictions over the image and its mirror"
    )
    tta_translate: bool = Field(
        False, description="final evaluation: also average over the image shifted 1 px up-left and down-right"
    )
    range_test: RangeTestOptions = Field(default_factory=lambda: RangeTestOptions.model_validate({}),
                                         description="used when max_lr='auto'")
    compile: bool = Field(False, description="torch.compile the model (CUDA only)")
    recipe_fields: list[RecipeField] | None = Field(
        None,
        description="with a triangular-family policy, the fields left to the recipe: 'step_size' (with "
        "step_unit) is fitted so the epochs hold whole cycles (one_cycle when not one fits), for max_lr "
        "'auto' or fixed; 'epochs' (only together with step_size) stay as given or defaulted, the step is "
        "fitted to them. Default: those the request leaves unset (a preset's values count as set)",
    )
    compile_mode: Literal["default", "reduce-overhead"] = Field(
        "default", description="torch.compile mode when compile is on: reduce-overhead adds CUDA graphs "
        "(pays at small batches)",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill what the request leaves out from the preset; nested objects merge field by field."""
        # A preset that is not a known name is left to the field validator below (a 422 naming `preset`).
        if not isinstance(data, dict) or not isinstance(data.get("preset"), str) or data["preset"] not in PRESETS:
            return data
        return _merge(PRESETS[data["preset"]], data)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(sorted(PRESETS))}")
        return value

    @field_validator("recipe_fields", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """The CLI's `--recipe-fields step_size,epochs` is one string."""
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("recipe_fields")
    @classmethod
    def _epochs_need_step(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and "epochs" in value and "step_size" not in value:
            raise ValueError("'epochs' comes from the recipe only together with 'step_size'")
        return None if value is None else sorted(set(value), key=("step_size", "epochs").index)

    @model_validator(mode="after")
    def _spell_out_recipe_fields(self) -> TrainSpec:
        """Left out, recipe_fields becomes the schedule fields this request did not set, written down.

        From here on the spec says which fields the range test fills: a stored record, spec.json and a
        re-validated copy all carry the same list, instead of each reading it from what was left unset.
        """
        if self.recipe_fields is None:
            self.recipe_fields = default_recipe_fields(self.model_fields_set)
        return self


def default_recipe_fields(given: set[str]) -> list[RecipeField]:
    """The fields a request leaves to the recipe: the step size unless step_size or step_unit was set,
    and the epochs too unless they were set (the recipe's epochs are whole cycles of its own step)."""
    if given & {"step_size", "step_unit"}:
        return []
    return ["step_size"] if "epochs" in given else ["step_size", "epochs"]


def _merge(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in given.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both_dicts else value
    return out



def parse_spec(data: dict[str, Any]) -> RangeTestSpec | TrainSpec:
    """Validate a stored or submitted spec by its `kind`."""
    kind = data.get("kind")
    return RangeTestSpec.model_validate(data) if kind == "range_test" else TrainSpec.model_validate(data)
