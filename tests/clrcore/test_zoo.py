"""torchvision's architectures: the catalog's stored facts against the built models, and a real step each."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from clrcore import catalog, zoo
from clrcore.models import build_model

ZOO = catalog.model_names("torchvision")
# A real CPU step for every architecture costs many minutes on a shared 2-core VM (28 architectures under
# 15M parameters took 795 s at load average ~20), so the default run steps the ones issue 17 names;
# CLR_ZOO_ALL=1 steps them all.
NAMED_IN_ISSUE_17 = {"resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
                     "efficientnet_b0", "convnext_tiny", "regnet_y_400mf", "vit_b_16"}
STEP_ALL = bool(os.environ.get("CLR_ZOO_ALL"))
STEPPED = [n for n in ZOO if STEP_ALL or n in NAMED_IN_ISSUE_17]
STEP_LIMIT = 30_000_000  # RegNets above this build on the CPU only with CLR_ZOO_ALL (facts check)
# The facts are checked on the meta device (nothing allocated), except for builders that need real
# tensors (RegNets): the big ones of those join only with CLR_ZOO_ALL=1.
CHECKED = [n for n in ZOO if zoo.shape_device(n) == "meta" or STEP_ALL
           or catalog.MODELS[n].parameters < STEP_LIMIT]


def test_catalog_lists_every_torchvision_classifier():
    assert zoo.zoo_names() == ZOO
    assert set(ZOO) >= NAMED_IN_ISSUE_17


@pytest.mark.parametrize("name", CHECKED)
def test_stored_facts_match_the_built_model(name):
    info = catalog.MODELS[name]
    assert info.parameters == zoo.parameter_count(name)
    assert list(info.pretrained) == zoo.pretrained_names(name)
    assert zoo.trains_at(name, info.min_image_size)
    smaller = [s for s in zoo.SIZE_CANDIDATES if s < info.min_image_size]
    if smaller and name not in zoo.SIZED_BY_ARGUMENT:  # the transformers' floor is a choice, not a failure
        assert not zoo.trains_at(name, smaller[-1])


@pytest.mark.parametrize("name", STEPPED)
def test_takes_a_training_step_at_its_minimum_size(name):
    size = catalog.MODELS[name].min_image_size
    torch.manual_seed(0)
    model = build_model(name, 3, 5, size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, size, size)), torch.tensor([0, 4]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", ["resnet18", "vit_b_16", "mobilenet_v3_small"])
def test_grayscale_input_and_class_count(name):
    size = catalog.MODELS[name].min_image_size
    model = build_model(name, 1, 7, size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


def test_below_minimum_size_is_refused():
    with pytest.raises(ValueError, match="minimum"):
        build_model("inception_v3", 3, 10, 32)


def test_weights_missing_from_the_hub_cache_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(zoo.PretrainedMissing) as caught:
        zoo.build_zoo_model("resnet18", 3, 10, 32, weights="ResNet18_Weights.IMAGENET1K_V1")
    message = str(caught.value)
    assert "\n" not in message and "ResNet18_Weights.IMAGENET1K_V1" in message and str(tmp_path) in message


def test_unknown_weights_name_the_known_ones():
    with pytest.raises(ValueError, match="ResNet18_Weights.IMAGENET1K_V1"):
        zoo.build_zoo_model("resnet18", 3, 10, 32, weights="ResNet18_Weights.NOPE")
