"""Deterministic inputs shared by samples/make_tiny.py, tests and benchmarks."""
from __future__ import annotations

import numpy as np
from PIL import Image


def conditioning_image(size: int = 64) -> Image.Image:
    """A red disc on a blue background: simple, recognisable, deterministic."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 3), np.uint8)
    img[...] = (30, 60, 200)
    img[(yy - size * 0.5) ** 2 + (xx - size * 0.35) ** 2 < (size * 0.18) ** 2] = (220, 30, 30)
    return Image.fromarray(img)
