"""Every catalog architecture's state names and shapes, as plain data: how the API checks uploaded weights.

The API must not import torch (tests/test_boundaries.py), yet it must refuse weights that do not fit an
architecture before storing them. Building the model is torch; so `scripts/zoo_facts.py --shapes`
builds each one once (on the meta device: nothing allocated) and writes its state_dict names and
shapes to `state_shapes.json.gz` next to this module (about 0.1 MB for 84 architectures: the names
repeat and gzip folds them), and this module reads that file. Rejected alternatives: building on
request (torch in the API), or handing the check to a worker (an upload would then be stored before
it is known to fit, and a queue round trip would sit inside a request). tests/clrcore/test_state_shapes.py
checks the stored table against the built models, as test_zoo.py does for the catalog's facts.

Shapes are at 3 input channels and 10 classes (224 px for the patch transformers). `free` names are
those whose shape depends on the data (the classifier head on the class count, the stem on the
channels, position embeddings on the image size): any shape is accepted there, since fine-tuning
replaces the head and the loader keeps the model's own tensor wherever the shapes differ.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

from clrcore.safetensors_header import Header, WeightsError, compare

TABLE = Path(__file__).with_name("state_shapes.json.gz")


@cache
def _table() -> dict[str, dict]:
    with gzip.open(TABLE, "rt", encoding="utf-8") as handle:
        return dict(json.load(handle))


def architectures() -> list[str]:
    return sorted(_table())


def layout(name: str) -> tuple[dict[str, list[int]], set[str]]:
    """(state name -> shape, free names) of a catalog architecture; KeyError if the table lacks it."""
    entry = _table()[name]
    return {tensor: list(shape) for tensor, shape in entry["tensors"]}, set(entry["free"])


def check_header(header: Header, name: str) -> list[WeightsError]:
    """Problems of a safetensors header against architecture `name` (empty: it fits)."""
    expected, free = layout(name)
    return compare(header, expected, free)
