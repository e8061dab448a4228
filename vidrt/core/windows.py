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


def first_frame(latent: int, temporal_compression: int) -> int:
    """The first video frame of latent frame `latent` in a causal video VAE: latent frame 0 is video frame 0
    alone, every later one `temporal_compression` frames."""
    return 0 if latent == 0 else temporal_compression * (latent - 1) + 1


@dataclass(frozen=True)
class DecodeWindows:
    """Re-anchored decode windows of a causal video VAE (vidrt.models.wan_vae): each window decodes `window`
    latent frames, the first `overlap` of them shared with the window before (cross-faded)."""
    window: int            # latent frames
    overlap: int

    def starts(self, total: int) -> list[int]:
        """The latent frame each window starts at, for a sequence of `total` latent frames."""
        out = [0]
        while out[-1] + self.window < total:
            out.append(out[-1] + self.window - self.overlap)
        return out

    def decoded_latents(self, total: int) -> list[int]:
        """The latent frames each window's decoder call runs, for a sequence of `total`: the first window its own,
        each later one its anchor (the frame before it, encoded alone) and its own (vidrt.models.wan_vae)."""
        return [min(total, s + self.window) - s + (1 if s else 0) for s in self.starts(total)]


def decode_window_plan(spec, window_frames: int, overlap_frames: int) -> DecodeWindows:
    """Video frames -> latent-frame decode windows, as `window_plan` counts (the overlap rounds up to latent
    frames). Refused: an overlap not shorter than the window, a window of one latent frame (every window would
    be its anchor alone)."""
    window = spec.latent_frames(window_frames)
    overlap = -(-overlap_frames // spec.temporal_compression)
    if window < 2:
        raise VidrtError(f"long.decode_window: {window_frames} frames is one latent frame; give at least "
                         f"{spec.temporal_compression + 1}")
    if overlap >= window:
        raise VidrtError(f"long.decode_overlap: {overlap_frames} frames is not shorter than the decode window "
                         f"({window_frames} frames)")
    return DecodeWindows(window, overlap)


def decode_windows_for(spec, setting: int | str, overlap_frames: int | None,
                       declared: tuple[int, int] | None) -> DecodeWindows | None:
    """The decode windows of a render: `setting` is `long.decode_window` (auto | off | frames), `declared` the
    (window, overlap) frames a model declares beside its weights (vidrt.json). auto: the model's declaration,
    else none (the whole sequence through one causal cache, as the VAE's authors decode it). The overlap defaults
    to the declared one, else one latent frame."""
    if setting == "off":
        return None
    if setting == "auto":
        if declared is None or not spec.causal_vae:
            return None
        window, overlap = declared
    else:
        if not spec.causal_vae:
            raise VidrtError(f"long.decode_window: the {spec.family} family's VAE decodes frames independently; "
                             "only a causal video VAE (Wan) decodes in windows. Remove the key")
        window, overlap = int(setting), (declared[1] if declared else spec.temporal_compression)
    return decode_window_plan(spec, window, overlap if overlap_frames is None else overlap_frames)


def render_decode_windows(spec, long, declared: tuple[int, int] | None, total: int) -> DecodeWindows | None:
    """The decode windows of a render of `total` latent frames: `long` is the config's long-video section (None:
    every key at its default), `declared` the model's declaration. None when the sequence fits one window. The
    renderer decodes with these and the simulator prices them."""
    windows = decode_windows_for(spec, long.decode_window if long else "auto", long.decode_overlap if long else None,
                                 declared)
    return None if windows is None or total <= windows.window else windows
