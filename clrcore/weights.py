"""Pretrained weights as safetensors (never pickle): read, check against an architecture, load.

A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte offsets) and
raw bytes, so its names and shapes can be checked before any tensor is read, and reading it runs no
code. `check_weights` compares them with the architecture built on the meta device (nothing
allocated); the head and the stem may differ (other classes, other channels): the head is replaced,
a stem for other input channels adapted as torchvision's own weights are (RGB filters summed for grey
data, grey filters tiled for RGB), any other misfit left as the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clrcore.safetensors_header import WeightsError, compare, read_header

__all__ = ["WeightsError", "LoadedWeights", "read_header", "check_weights", "check_file", "load_weights",
           "save_weights", "architecture_layout"]


def expected_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def replaceable(model: nn.Module) -> set[str]:
    """State names the loader may leave out or replace: the head's (other classes) and the stem's
    (other channels); none for a model without a Linear head or a conv stem (squeezenet's conv head)."""
    from clrcore.zoo import _first_conv, classifier_head

    names = set()
    for find in (classifier_head, _first_conv):
        try:
            module = find(model)[2]
        except ValueError:
            continue
        for full, candidate in model.named_modules():
            if candidate is module:
                names |= {f"{full}.{p}" for p, _ in module.named_parameters()}
    return names


def check_weights(header: dict[str, tuple[str, list[int]]], model: nn.Module,
                  free: set[str] | None = None) -> list[str]:
    """Problems, one line each (empty if the weights fit `model`): unknown names, wrong shapes, missing.

    `free` adds names whose shape may differ beyond the head and stem (state_shapes' size-dependent ones).
    """
    return [str(e) for e in compare(header, expected_shapes(model), replaceable(model) | (free or set()))]


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


@dataclass(frozen=True)
class LoadedWeights:
    """What `load_weights` did besides loading: `kept`, the names whose shape differs, left as the model's
    own (head, size-dependent ones, a stem it cannot adapt); `adapted`, stem name -> how its filters were
    converted to the model's input channels (as torchvision's own weights are, `zoo.adapt_stem_weight`)."""

    kept: list[str]
    adapted: dict[str, str] = field(default_factory=dict)


def _stem_weight(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    from clrcore.zoo import _first_conv

    try:
        conv = _first_conv(model)[2]
    except ValueError:
        return None
    name = next(full for full, module in model.named_modules() if module is conv)
    return (f"{name}.weight" if name else "weight"), conv


def _adapt_stem(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Convert the file's stem filters in `state` to the model's input channels where only those differ.

    A stem with another filter count or kernel (resnet_fast's whitening stem has 2 * channels * k^2
    filters) is left alone: the loader keeps the model's own, and resnet_fast refits it to the data.
    """
    from clrcore.zoo import adapt_stem_weight, stem_conversion

    found = _stem_weight(model)
    if found is None or found[0] not in state:
        return {}
    name, conv = found
    have, want = tuple(state[name].shape), tuple(conv.weight.shape)
    if conv.groups != 1 or len(have) != 4 or have == want or have[:1] + have[2:] != want[:1] + want[2:]:
        return {}
    state[name] = adapt_stem_weight(state[name], want[1])
    return {name: stem_conversion(have[1], want[1])}


def load_weights(model: nn.Module, path: Path, free: set[str] | None = None, adapt_stem: bool = True) -> LoadedWeights:
    """Load a checked file into `model`; tensors whose shapes differ (head, stem) keep the model's own,
    except a conv stem for other input channels (an RGB file on grey data), whose filters are summed or
    tiled as torchvision's own pretrained weights are (`adapt_stem=False`: kept as the model's own too).

    WeightsError if the file does not fit at all. The tensors are read by safetensors (never
    `torch.load`): no code in the file runs.
    """
    from safetensors.torch import load_file

    problems = check_weights(read_header(path, check_offsets=True), model, free)
    if problems:
        raise WeightsError(f"{Path(path).name}: {problems[0]}")
    state = load_file(str(path))
    adapted = _adapt_stem(model, state) if adapt_stem else {}
    own = model.state_dict()
    kept = sorted(n for n, t in state.items() if tuple(t.shape) != tuple(own[n].shape))
    model.load_state_dict({n: t for n, t in state.items() if n not in kept}, strict=False)
    return LoadedWeights(kept, adapted)


def architecture_layout(name: str) -> dict[str, Any]:
    """A catalog architecture's state names and shapes and its free names, for `state_shapes`' table.

    Built twice on the shape device, at (3 channels, 10 classes, 224 px or the minimum) and (1 channel,
    7 classes, the minimum): the names whose shape changes, plus the head's and the stem's, are free.
    """
    from clrcore import catalog
    from clrcore.models import build_model
    from clrcore.zoo import SIZED_BY_ARGUMENT, shape_device

    minimum = catalog.MODELS[name].min_image_size
    with torch.device(shape_device(name)):
        model = build_model(name, 3, 10, 224 if name in SIZED_BY_ARGUMENT else minimum)
        other = build_model(name, 1, 7, minimum)
    shapes, others = expected_shapes(model), expected_shapes(other)
    free = {n for n, shape in shapes.items() if others.get(n) != shape} | replaceable(model)
    return {"tensors": [[n, shape] for n, shape in shapes.items()], "free": sorted(free)}
