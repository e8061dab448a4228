"""Video and image I/O: decord for reading, imageio-ffmpeg for writing, atomic files, the JSON sidecar, and the
output paths a render writes (checked before any model loads; torch is imported only to convert frames)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vidrt.core.errors import VidrtError
from vidrt.core.video_input import VIDEO_SUFFIXES, read_video, unpad_frame  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import torch



# ---------------------------------------------------------------------------------------- output paths
def sidecar_path(video_path: str | Path) -> Path:
    """`out/x.mp4` -> `out/x.json`."""
    return Path(video_path).with_suffix(".json")


def checkpoint_dir(video_path: str | Path) -> Path:
    """`out/x.mp4` -> `out/x.ckpt/` (the per-step checkpoints of an unfinished render)."""
    return Path(video_path).with_suffix(".ckpt")


def check_writable(path: str | Path, *, resume: bool = False, checkpoints: bool = False) -> Path:
    """Fail early (before any model loads) when the output cannot be written: not an .mp4, a folder where the
    video, its sidecar or its checkpoint file would go, a parent that is not writable - or, for a render that
    checkpoints, an unfinished render's checkpoint that only --resume may continue or replace."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise VidrtError(f"output.path: {path} must end in .mp4")
    if path.is_dir():
        raise VidrtError(f"output.path: {path} is a folder; give a file name such as {path / 'video.mp4'}")
    side = sidecar_path(path)
    if side.is_dir():
        raise VidrtError(f"output.path: the sidecar {side} would replace a folder of that name; move the folder "
                         "or choose another output name")
    ckpt = checkpoint_dir(path)
    if ckpt.exists() and not ckpt.is_dir():
        raise VidrtError(f"output.path: {ckpt} is a file where the render keeps its checkpoints; move it or "
                         "choose another output name")
    if checkpoints and not resume and ckpt.is_dir():
        raise VidrtError(f"output.path: {ckpt} holds the checkpoint of an unfinished render of {path.name}; add "
                         "--resume to continue it, or delete the folder to start over")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".vidrt-probe-"):
            pass
    except OSError as exc:
        raise VidrtError(f"output.path: directory {parent} is not writable ({exc.strerror or exc})") from None
    return path


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=f".partial{final.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; the final file should look like any other
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------- frames
def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(B, C, F, H, W) or (C, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8 (first batch item)."""
    import torch

    if video.ndim == 5:
        video = video[0]
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int, size: tuple[int, int],
                crf: int = 12) -> int:
    """Encode uint8 (H, W, 3) frames to an H.264 mp4 atomically; returns the number of frames written.

    `frames` may be a generator, so a caller can stream decoded chunks without holding the whole video.
    """
    import imageio_ffmpeg

    height, width = size
    count = 0
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            macro_block_size=1, output_params=["-crf", str(crf)], ffmpeg_log_level="error",
        )
        writer.send(None)
        try:
            for frame in frames:
                frame = np.ascontiguousarray(frame, dtype=np.uint8)
                if frame.shape != (height, width, 3):
                    raise ValueError(f"frame shape {frame.shape} != {(height, width, 3)}")
                writer.send(frame)
                count += 1
        finally:
            writer.close()
    return count


# ---------------------------------------------------------------------------------------- reading
def load_image(path: str | Path, key: str = "image"):
    """A conditioning image as RGB PIL: an image file, or the first frame of a video (through decord)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise VidrtError(f"{key}: no such file {path}")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return Image.fromarray(read_video(path)[0])
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise VidrtError(f"{key}: cannot read image {path} ({type(exc).__name__})") from None
