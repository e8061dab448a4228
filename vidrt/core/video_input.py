"""Frames of a video file, read with decord a chunk at a time, so a long input clip never sits whole in memory.

decord returns padded rows for some frame widths (an (H, W, C') array with C' != 3); `unpad_frame` drops the
padding, after which the frames equal imageio's decode.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidrt.core.errors import VidrtError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif")


def unpad_frame(frame: np.ndarray) -> np.ndarray:
    """One decoded frame as (H, W, 3): decord's padded rows for some widths dropped."""
    if frame.ndim == 3 and frame.shape[-1] == 3:
        return frame
    h, w = frame.shape[0], frame.shape[1]
    return frame.reshape(h, -1)[:, : w * 3].reshape(h, w, 3)


def _decord():
    try:
        import decord
    except ImportError:
        raise VidrtError("reading video needs decord: pip install 'vidrt[video]' (the decord2 wheel)") from None
    return decord


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class VideoInput:
    """A readable video file: its frame count and size, probed once; frames read on demand in chunks."""

    path: Path
    count: int
    height: int
    width: int
    fps: float
    key: str = "input_video"       # the config key named in messages

    @classmethod
    def open(cls, path: str | Path, key: str = "input_video") -> VideoInput:
        """Probe `path` (one line naming `key` when it is missing, unreadable or empty)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise VidrtError(f"{key}: no such file {path}")
        decord = _decord()
        try:
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
            count = len(reader)
            first = unpad_frame(reader[0].asnumpy()) if count else None
            fps = float(reader.get_avg_fps())
        except Exception as exc:  # decord raises its own DECORDError types
            raise VidrtError(f"{key}: cannot decode {path}: {_reason(exc)}") from None
        if first is None:
            raise VidrtError(f"{key}: {path} has no frames")
        return cls(path, count, int(first.shape[0]), int(first.shape[1]), fps, key)

    def chunks(self, frames: int | None = None, size: int = 16) -> Iterator[np.ndarray]:
        """The first `frames` frames (default: all) as uint8 (f, H, W, 3) arrays of up to `size` frames."""
        frames = self.count if frames is None else frames
        if frames > self.count:
            raise VidrtError(f"{self.key}: {self.path} has {self.count} frames; {frames} were asked for")
        decord = _decord()
        try:
            reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
            for start in range(0, frames, size):
                # frame by frame: get_batch fails on the widths whose rows decord pads
                yield np.stack([unpad_frame(reader[i].asnumpy()) for i in range(start, min(frames, start + size))])
        except VidrtError:
            raise
        except Exception as exc:
            raise VidrtError(f"{self.key}: cannot decode {self.path}: {_reason(exc)}") from None


def read_video(path: str | Path, key: str = "video") -> np.ndarray:
    """All frames of a video as (F, H, W, 3) uint8 (for short clips and tests; renders read in chunks)."""
    return np.concatenate(list(VideoInput.open(path, key).chunks()))
