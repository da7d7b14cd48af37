"""Model registry: names, sizes, output shapes at every supported input, and airbench mechanics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clrcore import catalog
from clrcore.models import (
    MODELS,
    FixedScaleBatchNorm,
    PatchWhitening,
    build_model,
    count_parameters,
    fit_image_count,
    fit_to_data,
)

INPUTS = [(1, 16), (1, 28), (3, 32)]


def test_registry_names_equal_catalog():
    assert sorted(MODELS) == catalog.model_names()


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("channels", "size"), INPUTS, ids=[f"{c}ch{s}" for c, s in INPUTS])
def test_output_shape(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, channels, 7, size)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_minigooglenet_matches_the_keras_blog_count():
    model = build_model("minigooglenet", 3, 10, 32)
    running_stats = sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # Keras' summary for the blog's CIFAR-10 model counts BN moving mean/variance too: 1,656,250.
    assert count_parameters(model) + running_stats == 1_656_250


@pytest.mark.parametrize(("name", "low", "high"), [
    ("resnet_fast", 1.8e6, 2.2e6),
    ("tiny_cnn", 15e3, 25e3),
])
def test_parameter_counts(name, low, high):
    assert low < count_parameters(build_model(name, 3, 10, 32)) < high
    assert low < count_parameters(build_model(name, 1, 10, 16)) < high


def test_resnet_fast_batchnorm_scale_is_fixed_and_convs_start_as_identity():
    model = build_model("resnet_fast", 3, 10, 32)
    norms = [m for m in model.modules() if isinstance(m, FixedScaleBatchNorm)]
    assert norms and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    conv = model[3].conv2.weight
    assert conv[0, 0, 1, 1] == 1 and conv[0, 0].sum() == 1
    assert count_parameters(model, trainable_only=True) < count_parameters(model)


def test_channels_last_and_backward():
    model = build_model("tiny_cnn", 3, 10, 32).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 3, 10, 32)
    with pytest.raises(ValueError, match="minimum"):
        build_model("tiny_cnn", 3, 10, 4)


def test_whitening_stem_decorrelates_training_patches_and_only_its_bias_learns():
    torch.manual_seed(0)
    model = build_model("resnet_fast", 3, 10, 32)
    stem = model[0]
    assert isinstance(stem, PatchWhitening) and stem.out_channels == 24
    assert not stem.weight.requires_grad and stem.bias.requires_grad
    images = torch.randn(400, 3, 32, 32) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    images[:, 1] += 0.8 * images[:, 0]  # correlated channels, unequal scales
    fit_to_data(model, images)
    with torch.no_grad():
        features = nn.functional.conv2d(images, stem.weight)  # without the (zero, learned) bias
    first_half = features[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = first_half.T @ first_half / len(first_half)
    assert torch.allclose(covariance, torch.eye(12), atol=5e-3)
    assert torch.equal(stem.weight[12:], -stem.weight[:12])  # both signs survive the GELU


def test_whitening_fit_sees_a_bounded_number_of_pixels_at_any_image_size():
    assert fit_image_count(32, 32) == 5000 and fit_image_count(28, 28) == 5000
    assert fit_image_count(224, 224) == 102 and fit_image_count(4000, 4000) == 1
    model = build_model("resnet_fast", 3, 10, 96)
    fit_to_data(model, torch.randn(300, 3, 96, 96))  # more than one chunk of 256
    assert torch.isfinite(model[0].weight).all() and model[0].weight.abs().sum() > 0


def test_fit_to_data_leaves_models_without_a_data_init_alone():
    model = build_model("tiny_cnn", 3, 10, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_to_data(model, torch.randn(8, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resnet_fast_takes_the_smallest_supported_image():
    model = build_model("resnet_fast", 1, 10, 10)
    assert model(torch.randn(2, 1, 10, 10)).shape == (2, 10)
    with pytest.raises(ValueError, match="below"):
        build_model("resnet_fast", 1, 10, 9)


def _float64_inverse_covariance(images: torch.Tensor, eps: float) -> torch.Tensor:
    """(C + eps I)^-1 of the 2x2 patches, from scratch in float64: what the filters F satisfy as F^T F.

    Compared through F^T F rather than filter by filter: eigenvectors of nearly equal eigenvalues are
    free to rotate within their subspace, their product is not."""
    patches = nn.functional.unfold(images.double(), 2).transpose(1, 2).reshape(-1, 12)
    covariance = patches.T @ patches / len(patches)
    return torch.linalg.inv(covariance + eps * torch.eye(12, dtype=torch.float64))


def test_whitening_fit_is_float64_whatever_the_matmul_precision():
    # a first CUDA train() sets "high" (TF32); a later fit must still sum the covariance in float64
    torch.manual_seed(0)
    images = torch.randn(600, 3, 32, 32) * 50 + 100  # large mean, as unnormalised pixels: float32 sums drift
    images[:, 2] = images[:, 1] + 1e-2 * torch.randn(600, 32, 32)  # a nearly dependent channel: a tiny eigenvalue
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        model = build_model("resnet_fast", 3, 10, 32)
        fit_to_data(model, images)
    finally:
        torch.set_float32_matmul_precision(before)
    filters = model[0].weight[:12].double().reshape(12, 12)
    expected = _float64_inverse_covariance(images, 5e-4)
    assert torch.allclose(filters.T @ filters, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_whitening_stem_runs_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    stem = build_model("resnet_fast", 3, 10, 32)[0]
    stem.fit(torch.randn(200, 3, 32, 32), 5e-4)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain = stem(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = stem(x.bfloat16())
    assert autocast.dtype == torch.float32
    assert torch.allclose(autocast, stem(x.bfloat16().float()), atol=0, rtol=0)  # only the input's rounding
    assert plain.dtype == torch.float32


def test_resnet_fast_global_pool_is_an_amax_with_the_adaptive_pools_outputs():
    torch.manual_seed(0)
    model = build_model("resnet_fast", 3, 10, 32)
    assert not any(isinstance(m, nn.AdaptiveMaxPool2d) for m in model.modules())
    x = torch.randn(5, 256, 3, 3, requires_grad=True)
    reference = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())(x)
    pooled = model[6](model[5](x))
    assert torch.equal(pooled, reference)
    (grad_ours,) = torch.autograd.grad(pooled.sum(), x)
    (grad_ref,) = torch.autograd.grad(reference.sum(), x)
    assert torch.equal(grad_ours, grad_ref)  # random inputs have no ties
    assert [k for k in model.state_dict() if k.startswith("7.")] == ["7.weight"]  # head keeps its index
