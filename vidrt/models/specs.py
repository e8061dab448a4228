"""What each model family requires of a render, as plain data: read by the config and `vidrt models` without
importing torch or diffusers (a config error answers at once). The adapters (wan.py, animatediff.py,
i2vgen.py) carry their family's spec and everything that needs the heavy stack."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vidrt.core.errors import VidrtError

SAMPLE_META = "vidrt.json"   # written beside a pipeline vidrt trained (native frame count, size)


@dataclass(frozen=True)
class FamilySpec:
    family: str
    description: str
    adapter: str                          # module of the family's adapter (its ADAPTER object)
    pipeline_class_names: tuple[str, ...]
    denoiser_class_names: tuple[str, ...]
    needs_image: bool = False
    optional_image: bool = False          # image switches to the family's image-to-video pipeline
    frame_rule: str = "any"               # "4k+1" for Wan's causal VAE
    size_multiple: int = 8
    native_frames: int = 16               # the length the model was trained on (a sample model's vidrt.json wins)
    temporal_compression: int = 1         # pixel frames per latent frame after the first (Wan: 4)

    def frames_error(self, frames: int) -> str | None:
        """Why `frames` cannot be rendered by this family (None when it can)."""
        if self.frame_rule == "4k+1" and (frames - 1) % 4:
            return f"frames: {frames} is not 4k+1 (required by {self.family}, e.g. 17, 33, 81)"
        return None

    def size_error(self, key: str, value: int) -> str | None:
        if value % self.size_multiple:
            return f"{key}: {value} is not a multiple of {self.size_multiple} (required by {self.family})"
        return None

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_compression + 1

    def native_frame_count(self, folder: str | Path | None = None) -> int:
        """The model's native length: a trained sample's vidrt.json beside its weights, else the family's."""
        meta = Path(folder) / SAMPLE_META if folder else None
        if meta is not None and meta.is_file():
            return int(json.loads(meta.read_text()).get("native_frames", self.native_frames))
        return self.native_frames


SPECS: dict[str, FamilySpec] = {s.family: s for s in (
    FamilySpec("wan", "Wan 2.1 DiT (T2V 1.3B/14B; I2V 14B when `image` is given). frames 4k+1, size multiple of 16",
               "vidrt.models.wan", ("WanPipeline", "WanImageToVideoPipeline"), ("WanTransformer3DModel",),
               optional_image=True, frame_rule="4k+1", size_multiple=16, native_frames=81, temporal_compression=4),
    FamilySpec("animatediff", "AnimateDiff: SD1.5 UNet + MotionAdapter (model.path = SD1.5 folder or AnimateDiff "
               "pipeline; model.motion_adapter = adapter folder/hub id). size multiple of 8",
               "vidrt.models.animatediff", ("AnimateDiffPipeline", "StableDiffusionPipeline"), ("UNetMotionModel",)),
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
