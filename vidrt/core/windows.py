"""Context windows of a long video, as arithmetic: where each window starts and how many there are. The config
checks (the work a render implies), the engine (the windows it runs) and the simulator (the windows it prices)
all count them here."""
from __future__ import annotations

from dataclasses import dataclass

from vidrt.core.errors import VidrtError


@dataclass(frozen=True)
class WindowPlan:
    window: int            # latent frames
    overlap: int
    total: int

    @property
    def windows(self) -> int:
        return len(window_starts(self.total, self.window, self.overlap))


def window_plan(spec, frames: int, native_frames: int, window_frames: int | None = None,
                overlap_frames: int | None = None) -> WindowPlan:
    """Video frames -> latent-frame windows: the window defaults to the native length, the overlap to a quarter
    of the window (at least one latent frame); an overlap in video frames rounds up to latent frames."""
    window_px = window_frames or native_frames
    window = spec.latent_frames(window_px)
    if overlap_frames is not None:
        overlap = -(-overlap_frames // spec.temporal_compression)
    else:
        overlap = max(1, window // 4)
    if overlap >= window:
        raise VidrtError(f"long.overlap: {overlap_frames} frames is not shorter than the window ({window_px} frames)")
    return WindowPlan(window, overlap, spec.latent_frames(frames))


def window_starts(total: int, window: int, overlap: int) -> list[int]:
    """Start indices of windows of length `window` covering [0, total) with at least `overlap` shared frames."""
    if total <= window:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap {overlap} must be in [0, window={window})")
    stride = window - overlap
    starts = list(range(0, total - window + 1, stride))
    if starts[-1] + window < total:
        starts.append(total - window)
    return starts
