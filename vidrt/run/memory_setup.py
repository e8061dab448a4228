"""A render's memory settings put on its pipeline: the config's `memory:` keys - or, with `memory.budget`, the
planner's choice - composed from the engine's verbs (slicing, VAE settings, offload, attention kernel)."""
from __future__ import annotations

from typing import Any

import torch
from rich.console import Console

from vidrt.config import RenderConfig
from vidrt.engine.attention import set_attention
from vidrt.engine.offload import OffloadConfig, enable_offload
from vidrt.engine.slicing import disable_slicing, enable_slicing
from vidrt.engine.vae import VaeConfig, enable_vae_settings
from vidrt.memory.planner import plan
from vidrt.memory.settings import MemorySettings, settings_from_config, slicing_config


def apply_settings(pipe, settings: MemorySettings, device: torch.device, height: int, width: int) -> dict[str, Any]:
    """Slicing, then the VAE, then offload (offload hooks wrap the sliced computation); returns what was
    applied, JSON-able (the sidecar's `memory`)."""
    applied: dict[str, Any] = {}
    sliced = slicing_config(settings)
    if sliced is None:
        disable_slicing(pipe)
        applied["slicing"] = "off"
    else:
        summary = enable_slicing(pipe, sliced)
        applied["slicing"] = {
            "frames": summary["chunk_frames"] if summary["chunk_frames"] is not None else "auto",
            "tokens": summary["chunk_tokens"] if summary["chunk_tokens"] is not None else "auto",
            "positions": summary["chunk_positions"] if summary["chunk_positions"] is not None else "auto",
            "patched_modules": summary["patched"],
        }
    applied["vae"] = enable_vae_settings(pipe, VaeConfig("on" if settings.vae_tiling else "off", height, width))
    applied["offload"] = enable_offload(pipe, OffloadConfig(settings.offload, str(device)))
    return applied


def apply_memory(pipe, cfg: RenderConfig, device: torch.device, log: Console, height: int, width: int,
                 gpus: int = 1) -> dict[str, Any]:
    """The config's memory settings, or - with `memory.budget` - the planner's fastest plan that fits (per GPU
    of `gpus` under torchrun, where it may shard the weights: offload "shard")."""
    settings = settings_from_config(cfg)
    chosen = None
    if cfg.memory.budget is not None:
        chosen = plan(cfg, cfg.memory.budget, pipe=pipe, gpus=gpus)
        settings = chosen.settings     # (the text encoder is always released after encoding)
        log.print(f"plan: {chosen}")
    applied = apply_settings(pipe, settings, device, height, width)
    applied["attention"] = set_attention(pipe, cfg.memory.attention, device)
    if chosen is not None:
        planned = chosen.to_dict()
        applied["plan"] = {"peak_bytes": planned["peak_bytes"], "budget_bytes": planned["budget_bytes"],
                           "memory": planned["memory"]}
    return applied
