"""Print catalog.ZOO's plain data (parameters, minimum image size, weight enums) measured on torchvision.

Run once when torchvision changes: `.venv/bin/python scripts/zoo_facts.py > /tmp/zoo.json`, then paste the
rows into clrcore/catalog.py. tests/clrcore/test_zoo.py checks the stored rows against the built models.
"""

from __future__ import annotations

import json
import sys

import torch

from clrcore.zoo import describe, zoo_names

if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in sys.argv[1:] or zoo_names():
        print(json.dumps({"name": name, **describe(name)}), flush=True)
