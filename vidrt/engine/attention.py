"""Attention kernel: torch SDPA (the default everywhere) or xformers' memory-efficient attention.

`memory.attention: auto | sdpa | xformers`. auto = xformers when the package imports and the render device is
CUDA, else SDPA (which on CUDA already picks flash / memory-efficient kernels). Two diffusers APIs, chosen by
the adapter's `attention_api`: Wan's processors dispatch through diffusers' attention backends
(`set_attention_backend`), and vidrt's sliced Wan forward passes the processor's backend on, so the choice holds
sliced too; the UNet families' processors ignore backends, so they get diffusers' xformers processors
(`enable_xformers_memory_efficient_attention`), which the sliced UNet blocks call like any processor.
"""
from __future__ import annotations

import importlib.util

import torch

from vidrt.core.errors import VidrtError
from vidrt.models import adapter_for, denoisers_of


def xformers_usable(device: torch.device) -> bool:
    return torch.device(device).type == "cuda" and importlib.util.find_spec("xformers") is not None


def set_attention(pipe, choice: str, device: torch.device) -> str:
    """Set the attention kernel of `pipe`'s denoiser(s); returns the one in use ("sdpa" or "xformers")."""
    if choice not in ("auto", "sdpa", "xformers"):
        raise VidrtError(f"memory.attention: {choice!r} is not one of auto, sdpa, xformers")
    usable = xformers_usable(device)
    if choice == "xformers" and not usable:
        raise VidrtError("memory.attention: xformers needs a CUDA device and the xformers package "
                         "(pip install 'vidrt[cuda]'); use auto or sdpa")
    if choice == "sdpa" or not usable:
        return "sdpa"
    for denoiser in denoisers_of(pipe):
        if adapter_for(denoiser).attention_api == "backend":
            denoiser.set_attention_backend("xformers")
        else:
            denoiser.enable_xformers_memory_efficient_attention()
    return "xformers"
