"""Byte sizes as people write them ("8GiB", "12GB") and as vidrt prints them."""
from __future__ import annotations

import math
import re
from typing import Any

from vidrt.core.errors import VidrtError

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3,
         "t": 1000 ** 4, "tb": 1000 ** 4, "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024 ** 4}


def format_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def parse_bytes(value: Any, key: str = "memory.budget") -> int:
    """'8GiB' / '12GB' / '512MiB' / '1.5 GiB' / a plain number of bytes -> bytes (> 0)."""
    if isinstance(value, bool):
        raise VidrtError(f"{key}: {value!r} is not a size like 8GiB, 12GB or 512MiB")
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).lower() not in UNITS:
            raise VidrtError(f"{key}: {value!r} is not a size like 8GiB, 12GB or 512MiB")
        n = float(m.group(1)) * UNITS[m.group(2).lower()]
    if not math.isfinite(n) or n <= 0:
        raise VidrtError(f"{key}: {value!r} must be a positive size such as 8GiB")
    return int(n)


def number_word(value: Any) -> Any:
    """A number that YAML 1.1 (PyYAML) read as a word ("1e9", "5e-3", "inf", "Infinity") as a float; any other
    value as it is. Shared by the config layer and the policy constructors, which take raw dicts too."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value
