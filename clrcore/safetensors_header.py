"""A safetensors file's header, read and checked without torch (the API checks uploads with it).

The format is an 8-byte little-endian header length, a JSON header (tensor name -> dtype, shape and
byte offsets into the data that follows) and the raw bytes. Reading it runs no code, unlike a pickle,
and the header alone says every name and shape, so an upload is judged before a tensor is read. The
offsets are checked the way the safetensors library checks them when it loads (each tensor's bytes
are its shape times its dtype's size, the tensors tile the data with no gap or overlap, the file ends
where the data does), so a file that passes here also loads in the worker.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100 * 2**20
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

Header = dict[str, tuple[str, list[int]]]  # tensor name -> (dtype, shape)


class WeightsError(ValueError):
    """Weights that do not fit: the message names the first offending tensor (`tensor`, when one is)."""

    def __init__(self, message: str, tensor: str | None = None, problem: str = "bad_weights") -> None:
        super().__init__(message)
        self.tensor, self.problem = tensor, problem


def _not_safetensors(why: str) -> WeightsError:
    return WeightsError(f"not a safetensors file ({why})", problem="not_safetensors")


def read_header(path: Path, *, check_offsets: bool = False, max_header_bytes: int = MAX_HEADER_BYTES) -> Header:
    """{tensor name: (dtype, shape)} from a safetensors file's header; WeightsError if it is not one.

    `check_offsets` also checks every tensor's byte range against its dtype, shape and the file size.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _not_safetensors("shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length > max_header_bytes:
            raise _not_safetensors(f"header of {length} bytes")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _not_safetensors("its header is not JSON") from None
    if not isinstance(header, dict):
        raise _not_safetensors("its header is not a JSON object")
    out: Header = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or "shape" not in entry or "dtype" not in entry:
            raise WeightsError(f"tensor {name!r}: no dtype and shape in the header", name, "bad_header")
        shape, dtype = entry["shape"], entry["dtype"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise WeightsError(f"tensor {name!r}: shape {shape!r} is not a list of sizes", name, "bad_header")
        if dtype not in DTYPE_BYTES:
            raise WeightsError(f"tensor {name!r}: unknown dtype {dtype!r}", name, "bad_header")
        out[name] = (dtype, shape)
        if check_offsets:
            spans.append((*_span(name, entry, dtype, shape), name))
    if check_offsets:
        _check_tiling(spans, path.stat().st_size - 8 - length)
    return out


def _span(name: str, entry: dict, dtype: str, shape: list[int]) -> tuple[int, int]:
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise WeightsError(f"tensor {name!r}: data_offsets {offsets!r} are not a [begin, end] byte range",
                           name, "bad_header")
    needed = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != needed:
        raise WeightsError(f"tensor {name!r}: {offsets[1] - offsets[0]} bytes of data for a {dtype} tensor "
                           f"of shape {shape}, which needs {needed}", name, "bad_header")
    return offsets[0], offsets[1]


def _check_tiling(spans: list[tuple[int, int, str]], data_bytes: int) -> None:
    """The tensors' byte ranges, in order, must cover the data exactly: no gap, no overlap, no tail."""
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise WeightsError(f"tensor {name!r}: its bytes start at {begin}, expected {end} (a gap or an "
                               "overlap)", name, "bad_header")
        end = stop
    if end != data_bytes:
        raise _not_safetensors(f"the header describes {end} bytes of data, the file holds {data_bytes}")


def compare(header: Header, expected: dict[str, list[int]], free: set[str]) -> list[WeightsError]:
    """The header against an architecture's state names and shapes; one error per problem, in name order.

    `free` names may have any shape (the head: another class count; the stem: other channels; a patch
    transformer's position embedding: another image size): the loader keeps the model's own for those.
    """
    problems = []
    for name, (dtype, shape) in sorted(header.items()):
        if name not in expected:
            problems.append(WeightsError(f"unknown tensor {name!r} for this architecture", name, "unknown_tensor"))
        elif shape != expected[name] and name not in free:
            problems.append(WeightsError(f"tensor {name!r} has shape {shape}, the architecture needs "
                                         f"{expected[name]}", name, "wrong_shape"))
        elif dtype not in FLOAT_DTYPES and not name.endswith("num_batches_tracked"):
            problems.append(WeightsError(f"tensor {name!r} has dtype {dtype}; weights must be floating point "
                                         f"({', '.join(FLOAT_DTYPES)})", name, "wrong_dtype"))
    missing = sorted(n for n in expected if n not in header and n not in free
                     and not n.endswith("num_batches_tracked"))
    if missing:
        problems.append(WeightsError(f"{len(missing)} tensors missing, first {missing[0]!r}", missing[0],
                                     "missing_tensor"))
    return problems
