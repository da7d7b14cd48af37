"""safetensors weights: a round trip into a new model, and files that do not fit the architecture refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from clrcore.models import build_model
from clrcore.weights import WeightsError, check_file, load_weights, read_header, save_weights


def test_round_trip_loads_the_body_and_keeps_a_fresh_head_for_other_classes(tmp_path):
    torch.manual_seed(0)
    source = build_model("resnet18", 3, 10, 32)
    save_weights(source, tmp_path / "r18.safetensors")
    assert check_file(tmp_path / "r18.safetensors", "resnet18") == []
    target = build_model("resnet18", 3, 4, 32)  # another class count: the head cannot be loaded
    kept = load_weights(target, tmp_path / "r18.safetensors")
    assert kept == ["fc.bias", "fc.weight"]
    loaded, original = target.state_dict(), source.state_dict()
    assert all(torch.equal(loaded[n], original[n]) for n in original if not n.startswith("fc."))
    assert target.fc.weight.shape == (4, 512)


def test_unknown_names_and_wrong_shapes_are_named(tmp_path):
    state = build_model("resnet18", 3, 10, 32).state_dict()
    bad_shape = {**state, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}
    save_file({k: v.contiguous() for k, v in bad_shape.items()}, str(tmp_path / "shape.safetensors"))
    problems = check_file(tmp_path / "shape.safetensors", "resnet18")
    assert problems == ["tensor 'layer1.0.conv1.weight' has shape [64, 64, 1, 1], the architecture needs "
                        "[64, 64, 3, 3]"]
    extra = {**state, "layer9.weight": torch.zeros(3)}
    save_file({k: v.contiguous() for k, v in extra.items()}, str(tmp_path / "extra.safetensors"))
    assert check_file(tmp_path / "extra.safetensors", "resnet18") == ["unknown tensor 'layer9.weight' for this "
                                                                       "architecture"]
    with pytest.raises(WeightsError, match="layer9"):
        load_weights(build_model("resnet18", 3, 10, 32), tmp_path / "extra.safetensors")
    partial = {k: v.contiguous() for k, v in state.items() if not k.startswith("layer4")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    assert "missing, first 'layer4.0.bn1.bias'" in check_file(tmp_path / "partial.safetensors", "resnet18")[0]


def test_a_pickle_is_not_read(tmp_path):
    torch.save(build_model("tiny_cnn", 3, 10, 32).state_dict(), tmp_path / "model.pt")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        read_header(tmp_path / "model.pt")
