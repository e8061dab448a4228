"""What each model family requires of a render, as plain data: read by the config and `vidrt models` without
importing torch or diffusers (a config error answers at once). The adapters (wan.py, animatediff.py,
i2vgen.py) carry their family's spec and everything that needs the heavy stack."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from vidrt.core.errors import VidrtError
from vidrt.core.files import parsed_once

SAMPLE_META = "vidrt.json"   # written beside a pipeline vidrt trained (native frame count, size)
# From this many pixels per frame up, a VAE decodes in tiles when nothing else decides (vae_tiling: auto without
# a budget): tiling is not exact (blended seams), so only where an untiled decode's activations are large.
TILING_PIXELS = 720 * 1280


def tiles_by_default(height: int, width: int) -> bool:
    return height * width >= TILING_PIXELS


@dataclass(frozen=True)
class FamilySpec:
    family: str
    description: str
    adapter: str                          # module of the family's adapter (its ADAPTER object)
    pipeline_class_names: tuple[str, ...]
    denoiser_class_names: tuple[str, ...]
    needs_image: bool = False
    optional_image: bool = False          # image switches to the family's image-to-video pipeline
    video_to_video: bool = False          # input_video switches to the family's video-to-video pipeline
    frame_rule: str = "any"               # "4k+1" for Wan's causal VAE
    size_multiple: int = 8
    native_frames: int = 16               # the length the model was trained on (a sample model's vidrt.json wins)
    temporal_compression: int = 1         # pixel frames per latent frame after the first (Wan: 4)
    spatial_compression: int = 8          # pixels per latent pixel along height and width
    latent_channels: int = 4              # channels of the denoising loop's latents
    denoiser_folder: str = "unet"         # the pipeline folder's denoiser component (its config.json)
    second_expert: str | None = None      # a second denoiser taking turns with the first (model.weights_2)
    causal_vae: bool = False              # a VAE whose decoder carries a feature cache along time (Wan)

    def frames_error(self, frames: int) -> str | None:
        """Why `frames` cannot be rendered by this family (None when it can)."""
        if self.frame_rule == "4k+1" and (frames - 1) % 4:
            return f"frames: {frames} is not 4k+1 (required by {self.family}, e.g. 17, 33, 81)"
        return None

    def frames_at_most(self, frames: int) -> int:
        """The longest frame count this family renders that is at most `frames` (>= 1)."""
        return (frames - 1) // 4 * 4 + 1 if self.frame_rule == "4k+1" else frames

    def render_frames(self, frames: int | None, native: int, input_frames: int | None = None) -> int:
        """The frames a render makes: `frames` when given, else as many of an input video's `input_frames` as
        this family renders (video-to-video), else the model's `native` length."""
        if frames:
            return int(frames)
        return self.frames_at_most(input_frames) if input_frames else native

    def size_error(self, key: str, value: int) -> str | None:
        if value % self.size_multiple:
            return f"{key}: {value} is not a multiple of {self.size_multiple} (required by {self.family})"
        return None

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_compression + 1

    def latent_bytes(self, frames: int, height: int, width: int, itemsize: int = 4) -> int:
        """Bytes of one full-length latent tensor of the denoising loop (batch 1, fp32 by default)."""
        s = self.spatial_compression
        return self.latent_channels * self.latent_frames(frames) * -(-height // s) * -(-width // s) * itemsize

    def host_bytes(self, frames: int, height: int, width: int, cfg_streams: int, tiled_decode: bool) -> dict:
        """Host bytes a render of this size holds whatever the device (when the loop runs on the host, or on
        the CPU): its full-length fp32 loop tensors (latents, noise, one prediction per CFG stream, the guided
        prediction, the scheduler's result) and, for a tiled decode, the fp32 video blended on the host."""
        tensors = 4 + cfg_streams
        video = 3 * frames * height * width * 4 if tiled_decode else 0
        return {"loop latents": tensors * self.latent_bytes(frames, height, width), "tiled decode": video}

    def native_frame_count(self, folder: str | Path | None = None) -> int:
        """The model's native length: a trained sample's vidrt.json beside its weights, else the family's."""
        try:
            return int(sample_meta(folder).get("native_frames", self.native_frames))
        except (ValueError, TypeError):
            return self.native_frames   # an unreadable note: the family's length

    def declared_decode_window(self, folder: str | Path | None = None) -> tuple[int, int] | None:
        """The (window, overlap) frames a trained sample's vidrt.json declares for decoding long videos in
        windows (`decode_window: {frames, overlap}`); None when it declares none."""
        declared = sample_meta(folder).get("decode_window")
        try:
            return (int(declared["frames"]), int(declared["overlap"])) if declared else None
        except (KeyError, ValueError, TypeError):
            return None   # an unreadable note: no declaration


def sample_meta(folder: str | Path | None) -> dict:
    """The vidrt.json a trained sample keeps beside its weights ({} when there is none or it cannot be read)."""
    meta = Path(folder) / SAMPLE_META if folder else None
    if meta is None or not meta.is_file():
        return {}
    try:
        return copy.deepcopy(_read_meta(meta))
    except OSError:
        return {}


def _parse_meta(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_read_meta = parsed_once(_parse_meta)   # several settings read the note (native length, decode windows)


SPECS: dict[str, FamilySpec] = {s.family: s for s in (
    FamilySpec("wan", "Wan 2.1 / 2.2 DiT (T2V 1.3B/14B, I2V 14B when `image` is given; Wan 2.2 TI2V-5B and the "
               "two-expert A14B). frames 4k+1, size multiple of 16 (Wan 2.2 TI2V: 32)",
               "vidrt.models.wan", ("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline"), ("WanTransformer3DModel",),
               optional_image=True, video_to_video=True, frame_rule="4k+1", size_multiple=16, native_frames=81, temporal_compression=4,
               latent_channels=16, denoiser_folder="transformer", second_expert="transformer_2", causal_vae=True),
    FamilySpec("animatediff", "AnimateDiff: SD1.5 UNet + MotionAdapter (model.path = SD1.5 folder or AnimateDiff "
               "pipeline; model.motion_adapter = adapter folder/hub id). size multiple of 8",
               "vidrt.models.animatediff", ("AnimateDiffPipeline", "StableDiffusionPipeline",
                                           "AnimateDiffVideoToVideoPipeline"), ("UNetMotionModel",),
               video_to_video=True),
    FamilySpec("i2vgen-xl", "I2VGen-XL: image + text to video (needs `image`). size multiple of 8",
               "vidrt.models.i2vgen", ("I2VGenXLPipeline",), ("I2VGenXLUNet",), needs_image=True),
)}


def get_spec(family: str) -> FamilySpec:
    try:
        return SPECS[family]
    except KeyError:
        raise VidrtError(f"model.family: unknown family {family!r}; known: {', '.join(SPECS)}") from None


def family_of_class(class_name: str) -> str | None:
    """The family whose pipelines have this class name (None when no family knows it)."""
    for spec in SPECS.values():
        if class_name in spec.pipeline_class_names:
            return spec.family
    return None
