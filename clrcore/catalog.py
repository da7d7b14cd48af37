"""What can be trained, as plain data.

The API validates job specs and answers `GET /v1/datasets` and `GET /v1/models` from this module
alone, so it must never import torch. `clrcore.datasets` and `clrcore.models` register a builder
for every name here (a test checks both lists agree).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from clrcore.zoo_table import ZOO_ROWS


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    channels: int
    image_size: int  # square side in pixels; 0 where it depends on the files (imagefolder)
    classes: tuple[str, ...]
    offline: bool  # usable with no internet (bundled or generated)

    def to_dict(self) -> dict:
        return {**asdict(self), "classes": list(self.classes), "input_shape": self.input_shape}

    @property
    def input_shape(self) -> list[int] | None:
        return [self.channels, self.image_size, self.image_size] if self.image_size else None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    params_note: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    parameters: int = 0  # at 3 input channels and 10 classes (224 px for the patch transformers)
    min_image_size: int = 8  # smallest square side it trains at sensibly
    source: str = "clrcore"  # "clrcore" (models.py) or "torchvision" (zoo.py)
    pretrained: tuple[str, ...] = field(default_factory=tuple)  # torchvision weights enums, if any

    def to_dict(self) -> dict:
        return {**asdict(self), "tags": list(self.tags), "pretrained": list(self.pretrained)}


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))

DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("digits", "scikit-learn's bundled 8x8 handwritten digits, upscaled to 16x16; offline",
                    1, 16, DIGIT_CLASSES, offline=True),
        DatasetInfo("synthetic", "generated class-dependent patterns for tests; offline",
                    3, 32, tuple(f"class{i}" for i in range(10)), offline=True),
        DatasetInfo("cifar10", "CIFAR-10 through torchvision (download or existing root), or the JPEG archive",
                    3, 32, CIFAR10_CLASSES, offline=False),
        DatasetInfo("fashion_mnist", "Fashion-MNIST through torchvision", 1, 28, FASHION_MNIST_CLASSES,
                    offline=False),
        DatasetInfo("mnist", "MNIST through torchvision", 1, 28, DIGIT_CLASSES, offline=False),
        DatasetInfo("imagefolder", "a directory or .tar/.tar.gz/.zip laid out split/class/image",
                    0, 0, (), offline=True),
    )
}

MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("minigooglenet", "MiniGoogLeNet from the Keras CLR blog (Zhang et al. 2017 variant)",
                  "about 1.7M parameters", ("blog",), parameters=1_652_826, min_image_size=8),
        ModelInfo("resnet_fast", "airbench94's net (patch-whitening stem fitted to the training images, "
                  "Dirac-initialised convs, no skip connections) for fast GPU runs",
                  "about 2M parameters", ("fast",), parameters=1_972_792, min_image_size=10),
        ModelInfo("small_cnn", "LeNet-sized: three conv-BN-ReLU stages with pooling and a linear head on "
                  "a 2x2 feature grid; the digits demo's model, for small images on a CPU",
                  "about 100k parameters", ("cpu",), parameters=98_602, min_image_size=8),
        ModelInfo("tiny_cnn", "two conv layers and a linear head; for CPU tests",
                  "about 20k parameters", ("cpu",), parameters=20_138, min_image_size=8),
        *(ModelInfo(name, f"torchvision's {name}, built for the dataset's channels and classes; from "
                    "scratch unless weights are named", f"{parameters / 1e6:.1f}M parameters",
                    ("torchvision",), parameters=parameters, min_image_size=minimum, source="torchvision",
                    pretrained=tuple(pretrained))
          for name, parameters, minimum, pretrained in ZOO_ROWS),
    )
}


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def model_names(source: str | None = None) -> list[str]:
    """Every model name, or those of one source ("clrcore" or "torchvision")."""
    return sorted(name for name, info in MODELS.items() if source is None or info.source == source)
