"""Simple, model-free measurements of rendered sample videos.

Shared by `bench/sample_quality.py` and `tests/test_sample_model.py`. Videos are float arrays
(T, H, W, 3) in [0, 1] (diffusers `output_type="np"` gives (B, T, H, W, 3)).
"""
from __future__ import annotations

import math

import numpy as np

from vidrt_dev.sample_data import DIRECTIONS, PALETTE


def _as_video(video) -> np.ndarray:
    v = np.asarray(video, dtype=np.float32)
    if v.ndim == 5:
        if v.shape[0] != 1:
            raise ValueError("pass one video, not a batch")
        v = v[0]
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3), got {v.shape}")
    return v


def nearest_colour(rgb) -> str:
    rgb = np.asarray(rgb, np.float32)
    return min(PALETTE, key=lambda name: float(np.sum((np.asarray(PALETTE[name]) - rgb) ** 2)))


def background_colour(video) -> np.ndarray:
    """Median RGB of the frame border pixels over all frames."""
    v = _as_video(video)
    border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1)
    return np.median(border.reshape(-1, 3), axis=0)


def blob_masks(video, threshold: float = 0.25) -> np.ndarray:
    """Boolean (T, H, W): pixels whose colour differs from the background colour by more than threshold."""
    v = _as_video(video)
    bg = background_colour(v)
    return np.linalg.norm(v - bg, axis=-1) > threshold


def blob_colour(video, threshold: float = 0.25) -> str | None:
    """Palette name of the dominant colour of the moving blob (median of blob pixels); None if no blob."""
    v = _as_video(video)
    m = blob_masks(v, threshold)
    if m.sum() < 3:
        return None
    return nearest_colour(np.median(v[m], axis=0))


def centroid_track(video, threshold: float = 0.25) -> np.ndarray:
    """(T, 2) blob centroid (x, y) per frame in pixels; NaN where a frame has no blob pixels."""
    v = _as_video(video)
    m = blob_masks(v, threshold)
    T, H, W = m.shape
    ys, xs = np.mgrid[0:H, 0:W]
    out = np.full((T, 2), np.nan, np.float32)
    for t in range(T):
        n = m[t].sum()
        if n:
            out[t] = (xs[m[t]].mean(), ys[m[t]].mean())
    return out


def motion_vector(video, threshold: float = 0.25) -> np.ndarray:
    """Least-squares velocity of the centroid track times the clip length: (dx, dy) in pixels."""
    track = centroid_track(video, threshold)
    ok = ~np.isnan(track[:, 0])
    if ok.sum() < 2:
        return np.zeros(2, np.float32)
    t = np.arange(len(track), dtype=np.float32)[ok]
    slope = np.polyfit(t, track[ok], 1)[0]
    return (slope * (len(track) - 1)).astype(np.float32)


def motion_direction(video, threshold: float = 0.25, min_pixels: float = 1.5) -> str | None:
    """Nearest of the grammar's eight directions to the centroid motion; None if it moved < min_pixels."""
    d = motion_vector(video, threshold)
    if float(np.hypot(*d)) < min_pixels:
        return None
    ang = math.atan2(float(d[1]), float(d[0]))
    return min(DIRECTIONS, key=lambda k: abs(math.remainder(ang - math.atan2(DIRECTIONS[k][1], DIRECTIONS[k][0]), math.tau)))


def direction_cosine(video, direction: str, threshold: float = 0.25) -> float:
    """Cosine between the centroid motion and the prompted direction (0 if there is no motion)."""
    d = motion_vector(video, threshold)
    n = float(np.hypot(*d))
    if n == 0:
        return 0.0
    u = np.asarray(DIRECTIONS[direction], np.float32)
    return float(d @ u / (n * np.hypot(*u)))


def temporal_consistency(video) -> float:
    """Mean absolute frame-to-frame difference (lower = steadier)."""
    v = _as_video(video)
    return float(np.abs(np.diff(v, axis=0)).mean()) if len(v) > 1 else 0.0


def sharpness(video) -> float:
    """Mean variance of the 4-neighbour Laplacian of the grey frames."""
    v = _as_video(video).mean(axis=-1)
    lap = -4 * v[:, 1:-1, 1:-1] + v[:, :-2, 1:-1] + v[:, 2:, 1:-1] + v[:, 1:-1, :-2] + v[:, 1:-1, 2:]
    return float(lap.reshape(len(v), -1).var(axis=1).mean())


# Fill ratio of a shape's bounding box: a circle covers pi/4 of its square, a square all of it, the grammar's
# upward triangle half. The decision boundaries lie halfway between.
SHAPE_FILL = {"triangle": 0.5, "circle": math.pi / 4, "square": 1.0}


def shape_of(mask: np.ndarray) -> str | None:
    """The grammar shape whose bounding-box fill ratio is nearest to the largest blob of a (H, W) mask (its
    4-connected component with the most pixels); None for fewer than 6 pixels."""
    mask = np.asarray(mask, bool)
    if mask.sum() < 6:
        return None
    comp = _largest_component(mask)
    ys, xs = np.nonzero(comp)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = comp.sum() / box
    return min(SHAPE_FILL, key=lambda k: abs(SHAPE_FILL[k] - fill))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels = np.zeros(mask.shape, np.int32)
    best, best_n, label = None, 0, 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        label += 1
        stack, n = [(y, x)], 0
        labels[y, x] = label
        while stack:
            cy, cx = stack.pop()
            n += 1
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        if n > best_n:
            best, best_n = label, n
    return labels == best
