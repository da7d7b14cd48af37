"""Pretrained weights as safetensors (never pickle): read, check against an architecture, load.

A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte offsets) and
raw bytes, so its names and shapes can be checked before any tensor is read, and reading it runs no
code. `check_weights` compares them with the architecture built on the meta device (nothing
allocated); the head and the stem may differ (other classes, other channels): those are replaced or
adapted, not loaded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn

MAX_HEADER_BYTES = 100 * 2**20


class WeightsError(ValueError):
    """Weights that do not fit: the message names the first offending tensor."""


def read_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """{tensor name: (dtype, shape)} from a safetensors file's header; WeightsError if it is not one."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise WeightsError("not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise WeightsError(f"not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WeightsError("not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError("not a safetensors file (its header is not a JSON object)")
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or "shape" not in entry or "dtype" not in entry:
            raise WeightsError(f"tensor {name!r}: no dtype and shape in the header")
        out[name] = (str(entry["dtype"]), [int(d) for d in entry["shape"]])
    return out


def expected_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def replaceable(model: nn.Module) -> set[str]:
    """State names the loader may leave out or replace: the head's (other classes) and the stem's."""
    from clrcore.zoo import _first_conv, classifier_head

    names = set()
    for module in (classifier_head(model)[2], _first_conv(model)[2]):
        for full, candidate in model.named_modules():
            if candidate is module:
                names |= {f"{full}.{p}" for p, _ in module.named_parameters()}
    return names


def check_weights(header: dict[str, tuple[str, list[int]]], model: nn.Module) -> list[str]:
    """Problems, one line each (empty if the weights fit `model`): unknown names, wrong shapes, missing."""
    expected = expected_shapes(model)
    free = replaceable(model)
    problems = []
    for name, (_, shape) in sorted(header.items()):
        if name not in expected:
            problems.append(f"unknown tensor {name!r} for this architecture")
        elif shape != expected[name] and name not in free:
            problems.append(f"tensor {name!r} has shape {shape}, the architecture needs {expected[name]}")
    missing = sorted(n for n in expected if n not in header and n not in free
                     and not n.endswith("num_batches_tracked"))
    if missing:
        problems.append(f"{len(missing)} tensors missing, first {missing[0]!r}")
    return problems


def check_file(path: Path, model_name: str, in_channels: int = 3, num_classes: int = 10,
               image_size: int = 224) -> list[str]:
    """check_weights for a file against a catalog architecture built on the meta device."""
    from clrcore.zoo import build_zoo_model, shape_device

    with torch.device(shape_device(model_name)):
        model = build_zoo_model(model_name, in_channels, num_classes, image_size)
    return check_weights(read_header(path), model)


def save_weights(model: nn.Module, path: Path) -> None:
    """The model's state as safetensors (contiguous CPU copies; shared tensors saved once each)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))


def load_weights(model: nn.Module, path: Path) -> list[str]:
    """Load a checked file into `model`; tensors whose shapes differ (head, stem) keep the model's own.

    Returns the names kept from the model. WeightsError if the file does not fit at all.
    """
    from safetensors.torch import load_file

    problems = check_weights(read_header(path), model)
    if problems:
        raise WeightsError(f"{Path(path).name}: {problems[0]}")
    state = load_file(str(path))
    own = model.state_dict()
    kept = sorted(n for n, t in state.items() if tuple(t.shape) != tuple(own[n].shape))
    model.load_state_dict({n: t for n, t in state.items() if n not in kept}, strict=False)
    return kept
