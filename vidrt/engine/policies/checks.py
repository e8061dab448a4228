"""Argument checks shared by the policy constructors (messages start with the parameter name, so the config
layer can name the key)."""
from __future__ import annotations

import math

from vidrt.core.units import number_word


def check_number(name: str, value, *, low: float | None = None, high: float | None = None, integer: bool = False,
                 allow_inf: bool = True):
    value = number_word(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if integer and (not float(value).is_integer() if math.isfinite(value) else True):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if math.isnan(value) or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name}: must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name}: must be <= {high}, got {value!r}")
    return int(value) if integer else float(value)
