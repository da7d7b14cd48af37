"""Checkpoints as one plain dict, written atomically and loadable with `torch.load(weights_only=True)`.

A worker can be killed at any moment (a cancel, a redelivered Celery task, an OOM), so a checkpoint
must never be half-written: it goes to a uniquely named temp file in the same directory and is moved
over the old one with `os.replace`. It holds only tensors, numbers, strings, lists and dicts, so
loading it never runs pickled code; that is why the RNG states are converted to tensors and lists.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clrcore.files import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: Path, *, may_write: Callable[[], bool] | None = None) -> Path:
    """Write `state` to `path` atomically: readers see the old checkpoint or the new one, never a torn one.

    `may_write` (see `atomic_write`) is checked right before the rename; False raises `WriteRefused`.
    """
    path = Path(path)
    with atomic_write(path, may_write=may_write) as handle:
        torch.save({"format": FORMAT_VERSION, **state}, handle)
    log.debug("checkpoint written to %s", path)
    return path


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with the safe unpickler; raises ValueError for a format this code cannot resume."""
    state = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path}: unknown format {found!r}")
    return state


def plain(value: Any) -> Any:
    """`value` as primitives, lists and dicts only (dataclasses, tuples, paths and devices converted)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# ---------------------------------------------------------------- RNG state


def capture_rng_state(generator: torch.Generator | None = None,
                      crop_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random stream a resumed run must continue, as tensors and lists.

    torch CPU and CUDA (dropout, init), numpy and Python `random` (anything a caller used), the data
    loader's own generator (shuffling and augmentation), which matters most, and the random-resized
    crops' generator of a mixed-size dataset (`transforms.CroppedLoader`), so a resumed run cuts the
    same crops as an uninterrupted one.
    """
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # only when this process has used CUDA: asking would otherwise start a context for nothing
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss_next": py_gauss},
        "loader": generator.get_state() if generator is not None else None,
        "crop": crop_generator.get_state() if crop_generator is not None else None,
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None,
                      crop_generator: torch.Generator | None = None) -> None:
    """Put back what `capture_rng_state` saved; CUDA states only where this machine has the devices.

    A checkpoint from before crops were captured has no "crop" state: the crops then start afresh.
    """
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            log.warning("checkpoint has %d CUDA RNG states, this machine %d devices; not restored",
                        len(cuda_states), torch.cuda.device_count())
    np_state = state["numpy"]
    np.random.set_state((
        np_state["kind"],
        np_state["keys"].cpu().numpy().astype(np.uint32),
        np_state["pos"],
        np_state["has_gauss"],
        np_state["cached_gaussian"],
    ))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss_next"]))
    if generator is not None and state.get("loader") is not None:
        generator.set_state(state["loader"].cpu())
    if crop_generator is not None and state.get("crop") is not None:
        crop_generator.set_state(state["crop"].cpu())
