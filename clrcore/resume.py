"""Checkpoint and resume of a training run: what must match to resume, and the write fence around a save.

The file format and RNG capture are `checkpoint.py`'s; this module decides what a run's checkpoint
holds about its settings, refuses to resume under settings that change the trajectory, and writes an
epoch's checkpoint only while the caller's `Hooks.may_write` allows it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from clrcore.checkpoint import load_checkpoint, plain, restore_rng_state, save_checkpoint
from clrcore.files import WriteRefused
from clrcore.hooks import Hooks, StopRequested, check_may_write

if TYPE_CHECKING:
    from clrcore.train_setup import TrainConfig

log = logging.getLogger(__name__)

# Config fields that change the trajectory: a checkpoint written under other values cannot be resumed.
RESUME_MUST_MATCH = ("batch_size", "optimizer", "seed", "steps_per_epoch")


def config_summary(config: TrainConfig, steps: int) -> dict[str, Any]:
    summary = plain(config)
    summary["steps_per_epoch"] = steps
    return summary


def resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
           summary: dict[str, Any], crop_generator: torch.Generator | None = None,
           ) -> tuple[int, dict[str, list], dict[str, float]]:
    """Load a checkpoint into model, optimizer and RNGs (the loader's and, for random-resized crops,
    the crops'); returns (epochs done, history, timings)."""
    state = load_checkpoint(path, map_location=summary["device"])
    saved = state.get("config", {})
    mismatched = [key for key in RESUME_MUST_MATCH if saved.get(key) != summary.get(key)]
    if mismatched:
        raise ValueError(f"checkpoint {path} was written with other {', '.join(mismatched)}; "
                         "delete it or use the original settings")
    if saved.get("schedule") != summary.get("schedule") or saved.get("epochs") != summary.get("epochs"):
        log.warning("resuming %s with a different schedule or epoch count than it was written with", path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_state(state["rng"], generator, crop_generator)
    log.info("resuming from %s after epoch %d", path, state["epoch"])
    return int(state["epoch"]), state["history"], dict(state.get("timings", {}))


def save_epoch_checkpoint(path: Path, hooks: Hooks, epoch: int, state: dict[str, Any]) -> None:
    """Write an epoch's checkpoint only while `hooks.may_write` allows it, before and at the rename."""
    what = f"checkpoint of epoch {epoch}"
    check_may_write(hooks.may_write, what)
    try:
        save_checkpoint(state, path, may_write=hooks.may_write)
    except WriteRefused as exc:
        raise StopRequested(f"lease lost: {what} not written (refused at the rename)") from exc
