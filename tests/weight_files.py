"""safetensors files written without torch, from the architectures' stored state shapes (fast, and the
same bytes the safetensors library writes: a JSON header padded to 8 bytes, then the raw tensors)."""

from __future__ import annotations

import json
import math
import struct

from clrcore import state_shapes
from clrcore.safetensors_header import DTYPE_BYTES


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A file of zero-filled tensors, name -> (dtype, shape)."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def architecture_tensors(name: str) -> dict[str, tuple[str, list[int]]]:
    """Every state tensor of a catalog architecture at 3 channels and 10 classes, F32 (I64 counters)."""
    expected, _ = state_shapes.layout(name)
    return {n: ("I64" if n.endswith("num_batches_tracked") else "F32", shape) for n, shape in expected.items()}


def architecture_file(name: str) -> bytes:
    return safetensors_bytes(architecture_tensors(name))
