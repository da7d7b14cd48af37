"""Test-time augmentation: which views are averaged, and with what weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clrcore.evaluation import tta_logits


def probe(x: torch.Tensor) -> torch.Tensor:
    """A 'model' whose logits are the top-left pixel and the pixel right of it: views are told apart."""
    return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, 1]], dim=1)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)


def test_no_views_is_the_plain_forward(images: torch.Tensor) -> None:
    assert torch.equal(tta_logits(probe, images), probe(images))


def test_flip_averages_the_image_and_its_mirror(images: torch.Tensor) -> None:
    expected = (probe(images) + probe(images.flip(-1))) / 2
    assert torch.allclose(tta_logits(probe, images, flip=True), expected)


@pytest.mark.parametrize("flip", [False, True])
def test_translate_adds_the_one_pixel_shifts_at_half_weight(images: torch.Tensor, flip: bool) -> None:
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :4, :4], padded[..., 2:, 2:]

    def views(x: torch.Tensor) -> torch.Tensor:
        return (probe(x) + probe(x.flip(-1))) / 2 if flip else probe(x)

    expected = views(images) / 2 + (views(up_left) + views(down_right)) / 4
    got = tta_logits(probe, images, flip=flip, translate=True)
    assert torch.allclose(got, expected)
    assert not torch.allclose(got, views(images))  # the shifted views really differ here


def test_every_view_keeps_the_channels_last_layout_a_compiled_model_was_built_for() -> None:
    layouts: list[bool] = []

    def recording(x: torch.Tensor) -> torch.Tensor:
        layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return probe(x)

    images = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    tta_logits(recording, images, flip=True, translate=True)
    assert layouts == [True] * 6


class StaticOutputModel:
    """Like a model compiled with CUDA graphs: every call writes its logits into the same buffer."""

    def __init__(self, model) -> None:
        self.model = model
        self.buffer: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.buffer is None:
            self.buffer = torch.empty_like(out)
        return self.buffer.copy_(out)


@pytest.mark.parametrize(("flip", "translate"), [(True, False), (False, True), (True, True)])
def test_views_survive_a_model_that_overwrites_its_output(images: torch.Tensor, flip: bool,
                                                          translate: bool) -> None:
    expected = tta_logits(probe, images, flip=flip, translate=translate)
    got = tta_logits(StaticOutputModel(probe), images, flip=flip, translate=translate)
    assert torch.allclose(got, expected, atol=1e-6)
