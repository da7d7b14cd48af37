"""Model registry: every catalog model name to a builder taking (in_channels, num_classes, image_size).

All three take 1- or 3-channel input at 16x16 (digits), 28x28 and 32x32: spatial sizes only ever
meet global pooling, never a fixed-size flatten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# minigooglenet: the Keras CLR blog's network (conv modules with BN + ReLU, inception and
# downsample modules), kept layer for layer; only its fixed 7x7 average pool became adaptive.


class ConvModule(nn.Sequential):
    """Conv (KxK, stride, 'same' or 'valid' padding) + BatchNorm + ReLU, the blog's building block."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 1,
                 padding: str | int = "same") -> None:
        # Keras' Conv2D keeps its bias even before BatchNorm; so does this, to match the blog's count.
        super().__init__(
            nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=padding),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(inplace=True),
        )


class Inception(nn.Module):
    """Concatenation of a 1x1 and a 3x3 conv module."""

    def __init__(self, channels_in: int, n1x1: int, n3x3: int) -> None:
        super().__init__()
        self.branch1 = ConvModule(channels_in, n1x1, 1)
        self.branch3 = ConvModule(channels_in, n3x3, 3)
        self.channels_out = n1x1 + n3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x)], dim=1)


class Downsample(nn.Module):
    """Concatenation of a 3x3 stride-2 conv module and a 3x3 stride-2 max pool ('valid', as in Keras)."""

    def __init__(self, channels_in: int, channels: int) -> None:
        super().__init__()
        self.conv = ConvModule(channels_in, channels, 3, stride=2, padding=0)
        self.pool = nn.MaxPool2d(3, stride=2)
        self.channels_out = channels_in + channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


class MiniGoogLeNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvModule(in_channels, 96, 3)]
        width = 96
        plan: list[tuple[Any, ...]] = [("i", 32, 32), ("i", 32, 48), ("d", 80),
                ("i", 112, 48), ("i", 96, 64), ("i", 80, 80), ("i", 48, 96), ("d", 96),
                ("i", 176, 160), ("i", 176, 160)]
        for kind, *sizes in plan:
            block = Inception(width, *sizes) if kind == "i" else Downsample(width, *sizes)
            layers.append(block)
            width = block.channels_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


# ---------------------------------------------------------------------------------------------
# resnet_fast: airbench94's network: a fixed patch-whitening stem set from the training images, three
# conv groups that pool early, BatchNorm with a fixed scale, identity (dirac) conv init, and a scaled
# linear head. Dirac init makes each conv start as a pass-through of its inputs: the residual idea
# at initialisation without skip connections. Whitening the stem is what lets a 10-epoch run get
# where a learned stem needs half as many epochs again (Keller Jordan's airbench ablations).

RESNET_FAST: dict[str, Any] = {
    "whiten_kernel": 2,  # 2x2 patches, 'valid': 32px in, 31px out; 2 * C * 2**2 filters (24 for RGB)
    "whiten_eps": 5e-4,  # added to the patch covariance's eigenvalues before the inverse square root
    "widths": (64, 256, 256),  # the three conv groups
    "bn_momentum": 0.4,  # PyTorch's convention (airbench writes 1 - 0.6): running stats follow fast
    "bn_eps": 1e-12,
    "head_scale": 1 / 9,  # airbench's logit multiplier: a tempered start for a bias-free head
}


class PatchWhitening(nn.Conv2d):
    """A 'valid' KxK conv whose filters whiten the training images' KxK patches; only its bias learns.

    The filters are the patch covariance's eigenvectors scaled by 1/sqrt(eigenvalue), each with its
    negation, so the GELU after it passes both signs. Until `fit` sees images they are the default
    random init (frozen), which still trains, just slower.
    """

    def __init__(self, channels_in: int, kernel: int) -> None:
        super().__init__(channels_in, 2 * channels_in * kernel**2, kernel, padding=0, bias=True)
        self.weight.requires_grad_(False)
        assert self.bias is not None
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Outside autocast, in float32: the weakest directions' filters are scaled up by about
        # 1/sqrt(eps), so bf16's 8-bit mantissa would leave several percent of rounding noise in them.
        # One 24-filter 2x2 conv costs next to nothing in float32; the layers after it autocast as usual.
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())

    @torch.no_grad()
    def fit(self, images: torch.Tensor, eps: float) -> None:
        """Set the filters from normalised NCHW float `images` (a few thousand are plenty).

        The covariance and its eigendecomposition are in float64: matmul precision "high" (which a
        CUDA `train()` sets for TF32) would otherwise round the sums to 10 bits of mantissa, and the
        smallest eigenvalues, the ones the filters scale up most, are the first to suffer.
        """
        channels, kernel = self.in_channels, self.kernel_size[0]
        size = channels * kernel**2
        covariance = torch.zeros(size, size, device=images.device, dtype=torch.float64)
        count = 0
        for chunk in images.split(256):  # patches of a chunk at a time: bounded memory at any image size
            patches = nn.functional.unfold(chunk.double(), kernel).transpose(1, 2).reshape(-1, size)
            covariance += patches.T @ patches
            count += len(patches)
        covariance /= count
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending; largest first below
        filters = (eigenvectors.T.flip(0) / torch.sqrt(eigenvalues.flip(0) + eps)[:, None])
        filters = filters.reshape(-1, channels, kernel, kernel)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight))


class FixedScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (not trained) and whose shift is learned, as airbench does."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=RESNET_FAST["bn_eps"], momentum=RESNET_FAST["bn_momentum"])
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    """3x3 'same' conv, no bias, initialised so its first outputs copy its inputs."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(channels_in, channels_out, 3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        weight = self.weight.data
        nn.init.dirac_(weight[: min(weight.size(0), weight.size(1))])


class ConvGroup(nn.Module):
    """conv - maxpool - BN - GELU - conv - BN - GELU; pooling before BN keeps the work small."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = DiracConv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FixedScaleBatchNorm(channels_out)
        self.conv2 = DiracConv(channels_out, channels_out)
        self.norm2 = FixedScaleBatchNorm(channels_out)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm1(self.pool(self.conv1(x))))
        return self.activation(self.norm2(self.conv2(x)))


class GlobalMaxPool(nn.Module):
    """Max over the spatial dimensions, (N, C, H, W) -> (N, C): one reduction kernel, where
    AdaptiveMaxPool2d(1) also computes and stores argmax indices for its backward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class ResNetFast(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        stem = PatchWhitening(in_channels, RESNET_FAST["whiten_kernel"])
        w1, w2, w3 = RESNET_FAST["widths"]
        super().__init__(
            stem,
            nn.GELU(),
            ConvGroup(stem.out_channels, w1),
            ConvGroup(w1, w2),
            ConvGroup(w2, w3),
            GlobalMaxPool(),  # airbench's MaxPool2d(3) on 3x3, for any input size
            nn.Flatten(),  # a no-op on (N, C); kept so the head stays at index 7 in older checkpoints
            nn.Linear(w3, num_classes, bias=False),
            Scale(RESNET_FAST["head_scale"]),
        )

    def fit_to_data(self, images: torch.Tensor) -> None:
        """Set the whitening stem from normalised training images."""
        stem = self[0]
        assert isinstance(stem, PatchWhitening)
        stem.fit(images, RESNET_FAST["whiten_eps"])


# ---------------------------------------------------------------------------------------------
# tiny_cnn: small enough to train on a laptop CPU in seconds.


class TinyCNN(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, num_classes),
        )


# ---------------------------------------------------------------------------------------------
# Registry

Builder = Callable[[int, int], nn.Module]

MODELS: dict[str, Builder] = {
    "minigooglenet": MiniGoogLeNet,
    "resnet_fast": ResNetFast,
    "tiny_cnn": TinyCNN,
}

MIN_IMAGE_SIZE = 8
# resnet_fast's 2x2 'valid' stem and three 2x2 pools need one more pixel: 10 -> 9 -> 4 -> 2 -> 1
MIN_IMAGE_SIZE_OF = {"resnet_fast": 10}


def model_names() -> list[str]:
    return sorted(MODELS)


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised model by catalog name; `image_size` is checked, the nets adapt to it."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    if in_channels < 1 or num_classes < 2:
        raise ValueError(f"model {name!r}: needs in_channels >= 1 and num_classes >= 2")
    minimum = MIN_IMAGE_SIZE_OF.get(name, MIN_IMAGE_SIZE)
    if image_size and image_size < minimum:
        raise ValueError(f"model {name!r}: images of {image_size}px are below the {minimum}px minimum")
    return MODELS[name](in_channels, num_classes)


FIT_IMAGES = 5000  # training images a data-dependent init sees (airbench's count for its whitening)


def fit_image_count(height: int, width: int) -> int:
    """FIT_IMAGES at 32x32, fewer for larger images: the same number of pixels (about 60 MB as floats)."""
    return max(1, min(FIT_IMAGES, FIT_IMAGES * 32 * 32 // max(1, height * width)))


def has_data_init(model: nn.Module) -> bool:
    """Whether `model` wants `fit_to_data` (so callers prepare the images only then)."""
    return callable(getattr(model, "fit_to_data", None))


def fit_to_data(model: nn.Module, images: torch.Tensor) -> None:
    """Data-dependent initialisation, for models that have one (resnet_fast's whitening stem).

    `images` are up to FIT_IMAGES normalised training images on the model's device, unaugmented. Call
    it once on a fresh model, before the optimizer is built; a resumed run's checkpoint overwrites it.
    """
    if has_data_init(model):
        cast(Any, model).fit_to_data(images)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those the optimizer updates)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
