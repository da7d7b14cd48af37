"""The one JSON-safe converter: numpy scalars and arrays, tuples and non-finite floats made plain.

`json.dumps` refuses numpy types and writes NaN/Infinity, which is not JSON. Every artifact, progress
event and job record passes through here, so a diverging loss reads `null` everywhere alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """A copy of `value` that `json.dumps(..., allow_nan=False)` accepts: NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
