"""The hub ids whose component configs ship with vidrt (known_configs/), so dry runs, plans and the checks before
loading work offline. No torch: the config checks use it before anything heavy is imported."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

KNOWN_PIPELINES = (
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers",       # per-token timesteps, the 16x VAE with 48 channels
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers",      # two 14B experts switched at the boundary timestep
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    "ali-vilab/i2vgen-xl",
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
)
KNOWN_MOTION_ADAPTERS = ("guoyww/animatediff-motion-adapter-v1-5-2",)   # loaded beside an SD1.5 pipeline
KNOWN_MODELS = KNOWN_PIPELINES + KNOWN_MOTION_ADAPTERS


def known_dir(model_id: str) -> Path | None:
    """The shipped config folder of a known hub id (None for any other id)."""
    if model_id not in KNOWN_MODELS:
        return None
    base = resources.files("vidrt.models") / "known_configs" / model_id.replace("/", "--")
    return Path(str(base))
