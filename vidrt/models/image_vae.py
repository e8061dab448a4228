"""Decoding video latents with a 2-D image VAE (AnimateDiff, I2VGen-XL): a few frames per call."""
from __future__ import annotations

from collections.abc import Iterator

import torch


def decode_per_frame(vae, latents: torch.Tensor, chunk_frames: int) -> Iterator[torch.Tensor]:
    """Decode (B, C, F, h, w) latents with a 2-D image VAE, `chunk_frames` frames at a time, yielding
    (B, 3, f, H, W) chunks — the same arithmetic as the pipelines' `decode_latents`."""
    b, c, f, h, w = latents.shape
    scaled = (1 / vae.config.scaling_factor * latents).to(vae.dtype)  # same arithmetic as diffusers
    for start in range(0, f, chunk_frames):
        part = scaled[:, :, start:start + chunk_frames]
        n = part.shape[2]
        flat = part.permute(0, 2, 1, 3, 4).reshape(b * n, c, h, w)
        video = vae.decode(flat).sample
        yield video.reshape(b, n, *video.shape[1:]).permute(0, 2, 1, 3, 4).float()
