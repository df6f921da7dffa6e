"""One check for "a finite number in a range", for every field a client or a commit may send.

JSON has no size limit on integers: ``1`` followed by 400 zeros parses into a Python ``int``
that ``math.isfinite`` and ``float`` refuse with ``OverflowError``. Python compares an ``int``
with a ``float`` exactly whatever its size, so the range is checked first and only a number
known to be small is converted. Exported to plugins (``alltalk_host.number_in``), whose
options arrive from the same JSON bodies.
"""

from __future__ import annotations

import math
from typing import Any


def number_in(value: Any, low: float, high: float, *, whole: bool = False,
              open_low: bool = False) -> float | None:
    """``value`` as a float when it is a number from ``low`` to ``high`` (above ``low`` with
    ``open_low``; an ``int`` with ``whole``), else None. Never raises: booleans, strings,
    NaN, infinities and integers of any number of digits are simply not in range."""
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value < low or value > high or (open_low and value == low):
        return None
    return float(value)
