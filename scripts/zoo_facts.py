"""Print catalog.ZOO's plain data (parameters, minimum image size, weight enums) measured on torchvision,
or, with `--shapes`, write every catalog architecture's state names and shapes for `clrcore.state_shapes`.

Run once when torchvision changes: `.venv/bin/python scripts/zoo_facts.py > /tmp/zoo.json`, then paste the
rows into clrcore/zoo_table.py; and `.venv/bin/python scripts/zoo_facts.py --shapes` (rewrites
clrcore/state_shapes.json.gz). tests/clrcore/test_zoo.py and test_state_shapes.py check the stored data
against the built models.
"""

from __future__ import annotations

import gzip
import json
import sys

import torch

from clrcore import catalog
from clrcore.state_shapes import TABLE
from clrcore.weights import architecture_layout
from clrcore.zoo import describe, zoo_names


def write_shapes() -> None:
    """One JSON object, architecture -> {"tensors": [[name, shape], ...], "free": [...]}, gzip'd;
    `mtime=0` and sorted keys, so the same torchvision writes the same bytes."""
    table = {}
    for name in catalog.model_names():
        table[name] = architecture_layout(name)
        print(name, len(table[name]["tensors"]), "tensors,", len(table[name]["free"]), "free", file=sys.stderr)
    data = json.dumps(table, sort_keys=True, separators=(",", ":")).encode()
    with open(TABLE, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(data)
    print(f"{TABLE}: {TABLE.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:] == ["--shapes"]:
        write_shapes()
    else:
        for name in sys.argv[1:] or zoo_names():
            print(json.dumps({"name": name, **describe(name)}), flush=True)
