"""Procedural text-to-video data for the shipped sample model.

Every clip is a single coloured shape (circle, square, triangle) moving in a straight line across a plain
background of another colour. The caption follows exactly one grammar::

    "a {colour} {shape} moves {direction} on a {colour} background"

Clips are deterministic functions of an integer seed (`make_clip(seed)`), so training, tests and benchmarks
can regenerate the same data without storing it. Frames are float32 RGB in [0, 1], shaped (T, H, W, 3).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

GRAMMAR = "a {colour} {shape} moves {direction} on a {colour} background"

# Colour names -> RGB in [0, 1]. Kept far apart in RGB so the dominant colour of a rendered blob is
# unambiguous (nearest palette entry).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.12, 0.20, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "cyan": (0.10, 0.85, 0.90),
    "magenta": (0.90, 0.15, 0.85),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Unit direction vectors in image coordinates: x to the right, y downwards.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-1.0, -1.0),
    "up-right": (1.0, -1.0),
    "down-left": (-1.0, 1.0),
    "down-right": (1.0, 1.0),
}


def caption(colour: str, shape: str, direction: str, background: str) -> str:
    return f"a {colour} {shape} moves {direction} on a {background} background"


def parse_caption(text: str) -> dict[str, str] | None:
    """Inverse of `caption`; None if `text` does not follow the grammar."""
    words = text.strip().lower().split()
    if len(words) != 9 or words[0] != "a" or words[3] != "moves" or words[5:7] != ["on", "a"]:
        return None
    if words[8] != "background":
        return None
    colour, shape, direction, background = words[1], words[2], words[4], words[7]
    if colour not in PALETTE or background not in PALETTE or shape not in SHAPES or direction not in DIRECTIONS:
        return None
    return {"colour": colour, "shape": shape, "direction": direction, "background": background}


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    colour: str
    shape: str
    direction: str
    background: str
    size: float  # shape extent (diameter / side) in pixels
    start: tuple[float, float]  # centre (x, y) at the first frame, pixels
    travel: float  # distance travelled over the clip, pixels

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.direction, self.background)


def sample_spec(seed: int, *, height: int = 32, width: int = 32, colour: str | None = None,
                shape: str | None = None, direction: str | None = None,
                background: str | None = None) -> ClipSpec:
    """A random clip description, deterministic in `seed`. Any attribute can be pinned."""
    rng = np.random.default_rng(seed)
    colour = colour or COLOURS[rng.integers(len(COLOURS))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    direction = direction or tuple(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    if background is None:
        choices = [c for c in COLOURS if c != colour]
        background = choices[rng.integers(len(choices))]
    side = min(height, width)
    size = float(rng.uniform(0.30, 0.40) * side)  # area well under half the frame
    travel = float(rng.uniform(0.40, 0.50) * side)  # >= 20 % of the frame
    dx, dy = DIRECTIONS[direction]
    norm = math.hypot(dx, dy)
    ux, uy = dx / norm, dy / norm
    # Choose a start so the whole path keeps the shape inside the frame (margin of half the size).
    half = size / 2 + 0.5
    lo_x, hi_x = half - min(0.0, ux * travel), width - half - max(0.0, ux * travel)
    lo_y, hi_y = half - min(0.0, uy * travel), height - half - max(0.0, uy * travel)
    sx = float(rng.uniform(lo_x, hi_x)) if hi_x > lo_x else width / 2 - ux * travel / 2
    sy = float(rng.uniform(lo_y, hi_y)) if hi_y > lo_y else height / 2 - uy * travel / 2
    return ClipSpec(colour, shape, direction, background, size, (sx, sy), travel)


def _shape_mask(shape: str, cx: float, cy: float, size: float, height: int, width: int, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage mask (H, W) in [0, 1] via `ss`x`ss` supersampling."""
    ys = (np.arange(height * ss) + 0.5) / ss
    xs = (np.arange(width * ss) + 0.5) / ss
    X, Y = np.meshgrid(xs, ys)
    r = size / 2
    if shape == "circle":
        m = (X - cx) ** 2 + (Y - cy) ** 2 <= r * r
    elif shape == "square":
        m = (np.abs(X - cx) <= r) & (np.abs(Y - cy) <= r)
    elif shape == "triangle":
        # Upward-pointing isosceles triangle inscribed in the size x size box.
        top, bottom = cy - r, cy + r
        t = np.clip((Y - top) / (2 * r), 0.0, 1.0)
        m = (Y >= top) & (Y <= bottom) & (np.abs(X - cx) <= t * r)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m.reshape(height, ss, width, ss).mean(axis=(1, 3)).astype(np.float32)


def render_spec(spec: ClipSpec, *, frames: int = 13, height: int = 32, width: int = 32,
                pace_frames: int | None = None, wrap: bool = False) -> np.ndarray:
    """Render a clip: float32 array (T, H, W, 3) in [0, 1].

    The shape covers `spec.travel` pixels over `pace_frames` frames (the clip's own length by default), so a clip
    longer than its pace keeps the speed of a native clip; with `wrap` the frame is a torus (a shape leaving one
    edge re-enters at the opposite one), which lets a clip run at that speed for any length.
    """
    dx, dy = DIRECTIONS[spec.direction]
    norm = math.hypot(dx, dy)
    ux, uy = dx / norm, dy / norm
    fg = np.asarray(PALETTE[spec.colour], np.float32)
    bg = np.asarray(PALETTE[spec.background], np.float32)
    pace = max((pace_frames or frames) - 1, 1)
    out = np.empty((frames, height, width, 3), np.float32)
    for i in range(frames):
        cx = spec.start[0] + ux * spec.travel * i / pace
        cy = spec.start[1] + uy * spec.travel * i / pace
        if wrap:
            cx, cy = cx % width, cy % height
            m = np.zeros((height, width), np.float32)
            for ox in (-width, 0, width):
                for oy in (-height, 0, height):
                    m = np.maximum(m, _shape_mask(spec.shape, cx + ox, cy + oy, spec.size, height, width))
        else:
            m = _shape_mask(spec.shape, cx, cy, spec.size, height, width)
        m = m[..., None]
        out[i] = m * fg + (1 - m) * bg
    return out


def make_clip(seed: int, *, frames: int = 13, height: int = 32, width: int = 32, **pin: str) -> tuple[np.ndarray, str]:
    """(video (T, H, W, 3) float32 in [0, 1], caption) for `seed`."""
    spec = sample_spec(seed, height=height, width=width, **pin)
    return render_spec(spec, frames=frames, height=height, width=width), spec.caption


def make_dataset(n: int, seed: int = 0, *, frames: int = 13, height: int = 32, width: int = 32):
    """n clips as a (n, T, H, W, 3) float32 array plus the list of captions; clip i uses seed `seed*1_000_003+i`."""
    videos = np.empty((n, frames, height, width, 3), np.float32)
    caps = []
    for i in range(n):
        videos[i], c = make_clip(seed * 1_000_003 + i, frames=frames, height=height, width=width)
        caps.append(c)
    return videos, caps


def make_long_dataset(n: int, seed: int = 0, *, frames: int, pace_frames: int, height: int = 32,
                      width: int = 32):
    """n clips of `frames` frames moving at the speed of a `pace_frames`-frame clip on a torus (see
    `render_spec`): the data of long videos. Clip i uses seed `seed*1_000_003+i`, so its first `pace_frames`
    frames are `make_dataset`'s clip i with the same seed."""
    videos = np.empty((n, frames, height, width, 3), np.float32)
    caps = []
    for i in range(n):
        spec = sample_spec(seed * 1_000_003 + i, height=height, width=width)
        videos[i] = render_spec(spec, frames=frames, height=height, width=width, pace_frames=pace_frames, wrap=True)
        caps.append(spec.caption)
    return videos, caps
