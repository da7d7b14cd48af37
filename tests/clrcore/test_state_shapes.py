"""The stored state-shapes table (what the API checks uploaded weights with) against the built models."""

from __future__ import annotations

import os

import pytest
import torch

from clrcore import catalog, state_shapes
from clrcore.models import build_model
from clrcore.safetensors_header import read_header
from clrcore.weights import architecture_layout, check_file, save_weights
from tests.clrcore.test_zoo import CHECKED, NAMED_IN_ISSUE_17

# Building every architecture twice costs minutes on a shared 2-core machine; the default run checks the
# catalog's own nets and the ones issue 17 names, CLR_ZOO_ALL=1 all that test_zoo checks.
COMPARED = sorted(set(catalog.model_names("clrcore")) | (set(CHECKED) if os.environ.get("CLR_ZOO_ALL")
                                                         else NAMED_IN_ISSUE_17))


def test_every_catalog_model_has_a_row():
    assert state_shapes.architectures() == catalog.model_names()


@pytest.mark.parametrize("name", COMPARED)
def test_stored_shapes_match_the_built_model(name):
    expected, free = state_shapes.layout(name)
    layout = architecture_layout(name)
    assert expected == {n: shape for n, shape in layout["tensors"]}
    assert free == set(layout["free"])


def test_free_names_are_the_head_the_stem_and_size_dependent_embeddings():
    assert state_shapes.layout("resnet18")[1] == {"conv1.weight", "fc.weight", "fc.bias"}
    assert "encoder.pos_embedding" in state_shapes.layout("vit_b_16")[1]


def test_the_torch_free_check_agrees_with_the_library_written_file(tmp_path):
    torch.manual_seed(0)
    save_weights(build_model("resnet18", 3, 10, 32), tmp_path / "r18.safetensors")
    header = read_header(tmp_path / "r18.safetensors", check_offsets=True)  # the library's own layout passes
    assert state_shapes.check_header(header, "resnet18") == [] == check_file(tmp_path / "r18.safetensors", "resnet18")
    assert [e.tensor for e in state_shapes.check_header(header, "resnet34")][:1] == ["layer1.2.bn1.bias"]
