"""safetensors weights: a round trip into a new model, files that do not fit the architecture refused, and a
stem for other input channels converted as torchvision's own pretrained weights are."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.hub
import torchvision
from safetensors.torch import save_file

from clrcore import state_shapes
from clrcore.dataset_types import Split, make_dataset
from clrcore.datasets import load_digits_dataset
from clrcore.models import build_model
from clrcore.runs import fresh_model, run_range_test, run_training
from clrcore.specs import RangeTestSpec, TrainSpec
from clrcore.weights import WeightsError, check_file, load_weights, read_header, save_weights


def test_round_trip_loads_the_body_and_keeps_a_fresh_head_for_other_classes(tmp_path):
    torch.manual_seed(0)
    source = build_model("resnet18", 3, 10, 32)
    save_weights(source, tmp_path / "r18.safetensors")
    assert check_file(tmp_path / "r18.safetensors", "resnet18") == []
    target = build_model("resnet18", 3, 4, 32)  # another class count: the head cannot be loaded
    loaded_weights = load_weights(target, tmp_path / "r18.safetensors")
    assert loaded_weights.kept == ["fc.bias", "fc.weight"] and loaded_weights.adapted == {}
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


def test_a_run_starts_from_a_weights_file_and_an_uploaded_id_needs_one(tmp_path):
    torch.manual_seed(3)
    source = build_model("tiny_cnn", 1, 4, 16)  # a head for 4 classes: digits has 10
    save_weights(source, tmp_path / "w.safetensors")
    digits = load_digits_dataset()
    spec = TrainSpec(dataset="digits", model="tiny_cnn", finetune={"weights": "wt_0123456789abcdef", "groups": 2})
    with pytest.raises(WeightsError, match="wt_0123456789abcdef: uploaded weights are fetched by the service"):
        fresh_model(spec, digits, torch.device("cpu"))
    model = fresh_model(spec, digits, torch.device("cpu"), tmp_path / "w.safetensors")
    loaded, original = model.state_dict(), source.state_dict()
    assert all(torch.equal(loaded[n], original[n]) for n in original if not n.startswith("9."))
    assert model[9].out_features == 10  # a fresh head for the dataset's classes
    named = TrainSpec(dataset="digits", model="resnet18", finetune={"weights": "ResNet18_Weights.IMAGENET1K_V1"})
    with pytest.raises(WeightsError, match="name one starting point"):
        fresh_model(named, digits, torch.device("cpu"), tmp_path / "w.safetensors")


def test_resnet_fast_keeps_a_loaded_whitening_stem_and_refits_one_for_other_channels(tmp_path):
    digits = load_digits_dataset()
    spec = TrainSpec(dataset="digits", model="resnet_fast")
    torch.manual_seed(9)
    source = build_model("resnet_fast", 1, 10, 16)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)  # no data-dependent fit gives these
    save_weights(source, tmp_path / "grey.safetensors")
    loaded = fresh_model(spec, digits, torch.device("cpu"), tmp_path / "grey.safetensors")
    assert torch.equal(loaded.state_dict()["0.weight"], source.state_dict()["0.weight"])
    save_weights(build_model("resnet_fast", 3, 10, 16), tmp_path / "rgb.safetensors")  # a stem for 3 channels
    refitted = fresh_model(spec, digits, torch.device("cpu"), tmp_path / "rgb.safetensors")
    fitted = fresh_model(spec, digits, torch.device("cpu"))
    assert torch.equal(refitted.state_dict()["0.weight"], fitted.state_dict()["0.weight"])


@pytest.mark.parametrize(("file_channels", "data_channels"), [(3, 1), (1, 3)], ids=["rgb-file-grey-data",
                                                                                    "grey-file-rgb-data"])
def test_a_stem_for_other_channels_is_converted_as_torchvisions_own_weights_are(tmp_path, file_channels,
                                                                                 data_channels):
    torch.manual_seed(11)
    source = build_model("resnet18", file_channels, 10, 32)
    save_weights(source, tmp_path / "r18.safetensors")
    # the API's torch-free check (state_shapes' table) accepts the file for the architecture
    assert state_shapes.check_header(read_header(tmp_path / "r18.safetensors"), "resnet18") == []
    target = build_model("resnet18", data_channels, 10, 32)
    loaded_weights = load_weights(target, tmp_path / "r18.safetensors")
    assert loaded_weights.kept == []
    how = ("3 input channels summed into 1" if data_channels == 1 else
           "1 input channel tiled to 3 and scaled by 1/3")
    assert loaded_weights.adapted == {"conv1.weight": how}
    stem, loaded = source.state_dict()["conv1.weight"], target.state_dict()
    assert loaded["conv1.weight"].shape == (64, data_channels, 7, 7)
    if data_channels == 1:
        assert torch.equal(loaded["conv1.weight"], stem.sum(dim=1, keepdim=True))
    else:
        assert torch.allclose(loaded["conv1.weight"], stem.expand(-1, 3, -1, -1) / 3, rtol=1e-6, atol=0)
    original = source.state_dict()
    assert all(torch.equal(loaded[n], original[n]) for n in original if n != "conv1.weight")
    unadapted = build_model("resnet18", data_channels, 10, 32)
    before = unadapted.conv1.weight.detach().clone()
    assert load_weights(unadapted, tmp_path / "r18.safetensors", adapt_stem=False).kept == ["conv1.weight"]
    assert torch.equal(unadapted.conv1.weight, before)  # the old behaviour, on request: a fresh stem


def test_a_run_from_rgb_weights_on_grey_data_reports_the_summed_stem(tmp_path):
    torch.manual_seed(4)
    source = build_model("tiny_cnn", 3, 10, 16)
    save_weights(source, tmp_path / "rgb.safetensors")
    spec = TrainSpec(dataset="digits", model="tiny_cnn", device="cpu", epochs=1, batch_size=128, train_subset=256,
                     policy="triangular", base_lr=0.01, max_lr=0.05, step_size=1,
                     finetune={"weights": "wt_0123456789abcdef", "freeze_epochs": 1, "groups": 2})
    model = fresh_model(spec, load_digits_dataset(), torch.device("cpu"), tmp_path / "rgb.safetensors")
    assert torch.equal(model.state_dict()["0.weight"], source.state_dict()["0.weight"].sum(dim=1, keepdim=True))
    summary = run_training(spec, tmp_path / "run", data_dir=tmp_path, weights_file=tmp_path / "rgb.safetensors")
    assert summary["warnings"][0] == ("weights wt_0123456789abcdef: stem 0.weight converted, 3 input channels "
                                      "summed into 1")


def test_torchvision_weights_and_the_same_tensors_uploaded_give_grey_data_the_same_summed_stem(tmp_path, monkeypatch):
    torch.manual_seed(6)
    imagenet = torchvision.models.resnet18()  # RGB and 1000 classes, as ResNet18_Weights.IMAGENET1K_V1
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(imagenet.state_dict(), tmp_path / "hub" / "checkpoints" / os.path.basename(enum.url))  # its cache
    save_weights(imagenet, tmp_path / "imagenet.safetensors")
    rng = np.random.default_rng(0)
    grey = make_dataset("grey", *(Split(rng.integers(0, 256, (n, 1, 32, 32), dtype=np.uint8), np.arange(n) % 2)
                                  for n in (8, 4)), ["a", "b"])
    # torch.hub reads $TORCH_HOME/hub while set_dir was never called (set_dir would outlive this test and
    # hide TORCH_HOME from every later one in the process)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    named, uploaded = [], []
    cached = fresh_model(TrainSpec(dataset="digits", model="resnet18", finetune={"weights": str(enum)}), grey,
                         torch.device("cpu"), notes=named)
    spec = TrainSpec(dataset="digits", model="resnet18", finetune={"weights": "wt_0123456789abcdef"})
    upload = fresh_model(spec, grey, torch.device("cpu"), tmp_path / "imagenet.safetensors", notes=uploaded)
    summed = imagenet.state_dict()["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(cached.conv1.weight, summed) and torch.equal(upload.conv1.weight, summed)
    assert named == [f"weights {enum}: the stem's pretrained filters converted, 3 input channels summed into 1"]
    assert uploaded == ["weights wt_0123456789abcdef: stem conv1.weight converted, 3 input channels summed into 1"]
    body = [n for n in imagenet.state_dict() if not n.startswith(("fc.", "conv1."))]
    assert all(torch.equal(upload.state_dict()[n], cached.state_dict()[n]) for n in body)


def test_every_seed_of_a_fine_tuning_sweep_starts_from_the_uploaded_weights(tmp_path):
    # Before: the sweep's second and later seeds were built without the weights file, so a fine-tuning job
    # on uploaded weights failed at its second seed (and a local file's was silently left out)
    torch.manual_seed(5)
    save_weights(build_model("tiny_cnn", 1, 10, 16), tmp_path / "grey.safetensors")
    spec = RangeTestSpec(dataset="digits", model="tiny_cnn", device="cpu", batch_size=64, train_subset=256,
                         start_lr=1e-4, num_iter=12, seeds=2, shared_decades=0,  # whole seeds, each built anew
                         finetune={"weights": "wt_0123456789abcdef", "freeze_epochs": 1, "groups": 2})
    summary = run_range_test(spec, tmp_path / "run", data_dir=tmp_path, weights_file=tmp_path / "grey.safetensors")
    assert [s["seed"] for s in summary["seeds"]] == [spec.seed, spec.seed + 1]
    assert all(s["steps"] == 12 for s in summary["seeds"])  # the second seed swept as far as the first
