"""VAE decode settings on a pipeline: `enable_vae_settings(pipe, VaeConfig(...))` / `disable_vae_settings(pipe)`.

- Image VAEs (AnimateDiff / I2VGen-XL decode frame images with `AutoencoderKL`): `vae.enable_slicing()`
  decodes one batch item at a time (exact); the adapters already decode a few frames per call.
- Wan's causal video VAE: its `_decode` is replaced by `decode_into_buffer` (vidrt.models.wan_vae), the same
  loop writing into one preallocated output.
- Tiling (`vae.enable_tiling()`) splits H x W into overlapping tiles blended linearly: not exact, so "auto"
  turns it on only for large frames (vidrt.models.specs.tiles_by_default); "on" always; "off" never. (A render
  with a budget lets the planner decide instead.)
"""
from __future__ import annotations

from dataclasses import dataclass

from vidrt.core.errors import VidrtError
from vidrt.engine import attach
from vidrt.models.specs import tiles_by_default
from vidrt.models.wan_vae import decode_into_buffer, is_causal_video_vae

TILING = ("auto", "on", "off")
FEATURE = "vae"


@dataclass(frozen=True)
class VaeConfig:
    """tiling: "auto" (vidrt.models.specs.tiles_by_default), "on" or "off"; height/width: the render size "auto"
    reads."""

    tiling: str = "auto"
    height: int | None = None
    width: int | None = None

    def __post_init__(self):
        if self.tiling not in TILING:
            raise VidrtError(f"memory.vae_tiling: expected auto, on or off, got {self.tiling!r}")

    @property
    def tiles(self) -> bool:
        return self.tiling == "on" or (self.tiling == "auto" and self.height is not None and self.width is not None
                                       and tiles_by_default(self.height, self.width))


def enable_vae_settings(pipe, config: VaeConfig = VaeConfig()) -> dict:
    """Apply `config` to `pipe.vae` (or a bare VAE); returns what was set (JSON-able)."""
    vae = getattr(pipe, "vae", pipe)
    info: dict = {"vae_tiling": False, "vae_slicing": False, "vae_frame_buffer": False}
    if vae is None:
        return info
    if config.tiles and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
        info["vae_tiling"] = True
    elif hasattr(vae, "disable_tiling"):
        vae.disable_tiling()
    if hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
        info["vae_slicing"] = True
    if is_causal_video_vae(vae):
        attach.wrap_method(vae, "_decode", lambda call, z, return_dict=True: decode_into_buffer(vae, z, return_dict),
                           FEATURE)
        info["vae_frame_buffer"] = True
    return info


def disable_vae_settings(pipe) -> None:
    """Undo enable_vae_settings: diffusers' own decode, no tiling, no slicing."""
    vae = getattr(pipe, "vae", pipe)
    if vae is None:
        return
    attach.detach(vae, FEATURE)
    for name in ("disable_tiling", "disable_slicing"):
        if hasattr(vae, name):
            getattr(vae, name)()
