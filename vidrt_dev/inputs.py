"""One denoiser call's inputs for the tiny random-init twins (vidrt.models' `tiny()`), by family: seeded random
tensors in the layouts the pipelines pass (Wan: one CFG stream per call; the UNet families: text embeddings
repeated per frame, I2VGen-XL's image inputs)."""
from __future__ import annotations

import torch


def denoiser_inputs(family: str, den, batch: int, frames: int, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    if family == "wan":
        return dict(hidden_states=r(batch, den.config.in_channels, frames, size, size),
                    timestep=torch.tensor([500] * batch), encoder_hidden_states=r(batch, 16, den.config.text_dim),
                    return_dict=False)
    if family == "animatediff":
        return dict(sample=r(batch, 4, frames, size, size), timestep=torch.tensor(500),
                    encoder_hidden_states=r(batch, 16, 32).repeat_interleave(frames, 0), return_dict=False)
    return dict(sample=r(batch, 4, frames, size, size), timestep=torch.tensor(500),
                fps=torch.tensor([16] * batch), image_latents=r(batch, 4, frames, size, size),
                image_embeddings=r(batch, 4), encoder_hidden_states=r(batch, 16, 4), return_dict=False)
