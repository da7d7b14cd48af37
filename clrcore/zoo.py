"""torchvision's classification architectures by name, built for a dataset's channels and classes.

From scratch by default. `weights` names a torchvision weights enum ("ResNet18_Weights.IMAGENET1K_V1")
that must already be in the torch hub cache (never downloaded here: workers may have no internet);
the head is then replaced for the dataset's classes. The torch-free facts the API lists (parameter
counts, minimum image sizes, weight enums) live in `catalog.ZOO`; `describe` recomputes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Transformers with a fixed patch grid: the builder needs the image size (a multiple of the patch).
SIZED_BY_ARGUMENT = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}
# Built without auxiliary heads: their tuples of logits would need a loss of their own.
NO_AUX = {"inception_v3", "googlenet"}


class PretrainedMissing(RuntimeError):
    """Named torchvision weights are not in this machine's torch hub cache."""


def zoo_names() -> list[str]:
    """Every classification architecture torchvision builds (its own list, not a copy)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _builder_kwargs(name: str, num_classes: int, image_size: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if name in NO_AUX:
        kwargs.update(aux_logits=False, init_weights=True)
    if name in SIZED_BY_ARGUMENT:
        kwargs["image_size"] = image_size
    if name == "maxvit_t":
        kwargs["input_size"] = (image_size, image_size)
    return kwargs


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, child_name, child
    raise ValueError(f"{type(model).__name__}: no Conv2d stem to adapt to the input channels")


def adapt_stem_weight(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A stem conv's (out, in, kH, kW) filters for `channels` inputs: summed over the inputs for one
    channel (grey is the sum of what RGB filters see of R = G = B), else tiled and scaled by in/channels
    (a grey file's filters on RGB: each channel gets a third, so the response to R = G = B is unchanged).
    Shared by torchvision's own weights (`adapt_input_channels`) and uploaded ones (`weights.load_weights`)."""
    have = weight.shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.repeat(1, -(-channels // have), 1, 1)[:, :channels] * (have / channels)


def stem_conversion(have: int, channels: int) -> str:
    """How `adapt_stem_weight` turned `have` input channels into `channels`, in words for a job's summary."""
    if channels == 1:
        return f"{have} input channels summed into 1"
    return f"{have} input channel{'s' if have > 1 else ''} tiled to {channels} and scaled by {have}/{channels}"


def adapt_input_channels(model: nn.Module, channels: int) -> None:
    """Replace the stem conv for `channels` inputs; pretrained RGB filters are summed (grey) or tiled."""
    parent, attr, conv = _first_conv(model)
    if conv.in_channels == channels:
        return
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, stride=conv.stride,  # type: ignore[arg-type]
                    padding=conv.padding, dilation=conv.dilation,  # type: ignore[arg-type]
                    groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_stem_weight(conv.weight, channels))
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, attr, new)


def classifier_head(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The last Linear layer (the classifier) and where it hangs, for replacing it."""
    found = None
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, child_name, child)
    if found is None:
        raise ValueError(f"{type(model).__name__}: no Linear head found")
    return found


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """A fresh Linear head for `num_classes` in place of the last Linear; returns it."""
    parent, attr, old = classifier_head(model)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    setattr(parent, attr, new)
    return new


def hub_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _cached_weights(name: str, weights: str) -> Any:
    import torchvision

    try:
        enum = torchvision.models.get_weight(weights)
    except (ValueError, KeyError, AttributeError):
        known = ", ".join(str(w) for w in torchvision.models.get_model_weights(name))
        raise ValueError(f"unknown weights {weights!r} for {name}; known: {known}") from None
    if enum not in list(torchvision.models.get_model_weights(name)):
        raise ValueError(f"weights {weights!r} are not for {name}")
    file = hub_checkpoint_dir() / os.path.basename(enum.url)
    if not file.is_file():
        raise PretrainedMissing(f"weights {weights} are not in this worker's torch hub cache ({file}); "
                                "put the file there or upload them as safetensors")
    return enum


def build_zoo_model(name: str, in_channels: int, num_classes: int, image_size: int = 224,
                    weights: str | None = None) -> nn.Module:
    """A torchvision architecture for `in_channels` and `num_classes`, from scratch or cached weights."""
    import torchvision

    if name not in zoo_names():
        raise ValueError(f"unknown torchvision model {name!r}")
    kwargs = _builder_kwargs(name, num_classes, image_size)
    if weights is None:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    else:
        enum = _cached_weights(name, weights)
        kwargs.pop("num_classes")
        if name in SIZED_BY_ARGUMENT and image_size != enum.meta.get("min_size", (image_size,))[0]:
            kwargs.pop("image_size")  # the weights fix the position embeddings: keep their size
        if name in NO_AUX:
            kwargs.pop("init_weights")
        model = torchvision.models.get_model(name, weights=enum, progress=False, **kwargs)
        replace_head(model, num_classes)
    adapt_input_channels(model, in_channels)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# RegNets compute their widths with tensor ops that need data: the meta device cannot build them.
NEEDS_DATA_TO_BUILD = ("regnet_",)


def shape_device(name: str) -> str:
    """Where shapes can be worked out: the meta device (nothing allocated) unless the builder needs data."""
    return "cpu" if name.startswith(NEEDS_DATA_TO_BUILD) else "meta"


def parameter_count(name: str, in_channels: int = 3, num_classes: int = 10, image_size: int = 224) -> int:
    """Parameters, built on the meta device where possible: cheap even for the 600M ones."""
    with torch.device(shape_device(name)):
        return count_parameters(build_zoo_model(name, in_channels, num_classes, image_size))


SIZE_CANDIDATES = (32, 48, 56, 64, 96, 112, 128, 160, 224, 299)


def trains_at(name: str, size: int, in_channels: int = 3, num_classes: int = 10, device: str | None = None) -> bool:
    """Whether a batch of two `size`px images goes forward and backward in training mode.

    On the meta device by default: only shapes are computed, so even the 600M-parameter nets answer in
    a second; the CPU test then takes a real step at the size found. A net that needs data to build
    (RegNets) is built on the CPU and moved to the meta device for the step.
    """
    where = device or "meta"
    try:
        with torch.device(device or shape_device(name)):
            model = build_zoo_model(name, in_channels, num_classes, size)
        model.to(where).train()
        with torch.device(where):
            logits = model(torch.randn(2, in_channels, size, size))
            loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
        loss.backward()
    except (RuntimeError, ValueError, AssertionError, TypeError, IndexError):
        return False
    return True


def minimum_image_size(name: str) -> int:
    """The smallest candidate size it trains at; the patch transformers want at least a 4x4 grid."""
    floor = 4 * SIZED_BY_ARGUMENT.get(name, 8)
    for size in SIZE_CANDIDATES:
        if size >= floor and (name not in SIZED_BY_ARGUMENT or size % SIZED_BY_ARGUMENT[name] == 0) \
                and trains_at(name, size):
            return size
    raise ValueError(f"{name}: trains at none of {SIZE_CANDIDATES}")


def pretrained_names(name: str) -> list[str]:
    import torchvision

    return [str(w) for w in torchvision.models.get_model_weights(name)]


def describe(name: str, *, with_minimum: bool = True) -> dict[str, Any]:
    """The catalog's facts about one architecture, measured on the built model."""
    return {"parameters": parameter_count(name), "min_image_size": minimum_image_size(name) if with_minimum else 0,
            "pretrained": pretrained_names(name)}
