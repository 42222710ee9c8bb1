"""Values made JSON-safe: NaN and infinities become null, numpy scalars plain numbers, keys strings.

JSON has no NaN (``json.dumps`` writes a bare ``NaN`` that strict parsers refuse), yet metrics
carry it, e.g. F1 of an empty split. Every report, artifact and benchmark writer uses this.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts (mappings, lists, numbers)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers too
        return int(value)
    if isinstance(value, numbers.Real):  # float, numpy floating
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
